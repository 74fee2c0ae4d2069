"""The soak benchmark's figure (bench/soak.py): each series against the messages read, every
bounded structure against its bound, and where each bound is set."""

from __future__ import annotations

from pathlib import Path


def chart(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r["samples"]
    x = [p["messages"] for p in s]
    fig = plt.figure(figsize=(18, 12))
    grid = fig.add_gridspec(3, 3)
    rss, disk, rows = (fig.add_subplot(grid[0, k]) for k in range(3))
    items, lag = fig.add_subplot(grid[1, 0:2]), fig.add_subplot(grid[1, 2])
    fill, key = fig.add_subplot(grid[2, 0]), fig.add_subplot(grid[2, 1:3])
    rss.plot(x, [p["rss_mb"] for p in s], marker="o")
    rss.set_title("flow RSS (MB)")
    disk.plot(x, [p["recovery_bytes"] / 1e6 for p in s], marker="o", label="recovery dir")
    disk.plot(x, [p.get("recovery_db_bytes", 0) / 1e6 for p in s], marker=".", label="recovery databases")
    disk.plot(x, [p.get("recovery_wal_max_file_bytes", 0) / 1e6 for p in s], marker=".",
              label="largest recovery WAL file (≤ ~4 MB + a transaction)")
    disk.plot(x, [p["log_bytes"] / 1e6 for p in s], marker=".", label="logs")
    disk.plot(x, [p["dead_letter_bytes"] / 1e6 for p in s], marker=".", label="dead letters")
    disk.set_title("bytes on disk (MB; the results CSV grows by design)")
    disk.legend()
    rows.plot(x, [p["rows"] for p in s], marker="o")
    rows.set_title("rows in the results CSV")
    lag.plot(x, [p["lag"] for p in s], marker="o")
    lag.set_title("consumer lag (published − read)")
    bounds = r["verdict"]["bounds"]
    colors = plt.get_cmap("tab20").colors
    for k, (name, b) in enumerate(bounds.items()):
        color = colors[(2 * k) % 20 if k < 10 else (2 * k + 1) % 20]
        held = [p["bounds"].get(name, {}).get("items", 0) for p in s]
        items.plot(x, held, marker=".", color=color)
        items.axhline(b["limit"], ls="--", lw=1, color=color)
        fill.plot(x, [h / max(1, b["limit"]) for h in held], marker=".", color=color,
                  label=f"{name}: most {b['max_items']:,} of {b['limit']:,} — {b['where'] or '?'}")
    items.set_yscale("symlog")
    items.set_ylim(bottom=0)
    items.set_title("bounded structures: items held (dashed: each one's bound)")
    fill.axhline(1.0, color="k", ls="--", lw=1)
    fill.set_ylim(0, 1.15)
    fill.set_title("items / bound (1 = full; above 1 = a bug)")
    key.axis("off")
    key.legend(*fill.get_legend_handles_labels(), loc="center left", fontsize=8, title="structure: bound — where it is set")
    for ax in (rss, disk, rows, items, lag, fill):
        ax.set_xlabel("messages read")
    v = r["verdict"]
    away = (f", Fritz at {r['downstream_counts'].get('fritz_delay_s')} s/request + Slack down"
            if r.get("downstreams") == "slow" else "")
    fig.suptitle(f"soak: {r['n']:,} messages, {r['partitions']} partitions{away} — RSS flat {v['rss_flat']}, "
                 f"recovery bounded {v['recovery_bounded']}, within bounds {v['structures_within_bounds']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
