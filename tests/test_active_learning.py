"""Active-learning loop: query strategies, metrics, MLflow tracking, labelling CLI, experiments.

Real alerts (data/fink) with catalogue proxy labels stand in for vetted labels;
everything is written under pytest's tmp_path.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.vetting.active_learning import LoopConfig, simulate
from models.vetting.cli import main as al_main
from models.vetting.live import live_round
from models.vetting.synthetic import synthetic_pool
from models.vetting.classifier import (
    LABEL_KEYS,
    LABEL_TABLE,
    TARGETS,
    ClassifierConfig,
    classification_metrics,
    fit_classifier,
    permutation_importance_table,
    query_scores,
    select_batch,
)
from models.vetting.labeling import (
    LABEL_COLUMNS,
    append_label,
    label_session,
    proxy_label,
    proxy_labels_table,
    read_alerts,
    read_labels,
)

REPO = Path(__file__).resolve().parents[1]
ZTF_FILES = [REPO / "data/fink/fink_ztf_sample.avro", *sorted((REPO / "data/fink").glob("fink_ztf_2019_alert_*.avro"))]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run from tmp_path with no inherited tracking URI: nothing lands in the repo.

    One OpenMP thread, as the loop itself uses: on a shared 2-core machine,
    busy-waiting threads made tiny fits a hundred times slower.
    """
    from threadpoolctl import threadpool_limits

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def alerts():
    return read_alerts(ZTF_FILES)


def fallback_features(alerts) -> pd.DataFrame:
    """Feature frame from Fink's carried light-curve features, for when
    operators.vra.features is unavailable: enough columns for the loop."""
    rows = []
    for a in alerts:
        c = a["candidate"]
        row = {"candid": int(a["candid"]), "objectId": a["objectId"], "ra": c["ra"], "dec": c["dec"],
               "drb": c.get("drb"), "sep_arcsec": c.get("distpsnr1")}
        for key, suffix in (("lc_features_g", ""), ("lc_features_r", "r_")):
            for name, value in (a.get(key) or {}).items():
                if name in ("amplitude", "median", "linear_fit_slope", "median_absolute_deviation"):
                    row[name + suffix] = value
        rows.append(row)
    return pd.DataFrame(rows).astype({"candid": "int64"})


@pytest.fixture(scope="module")
def feature_table(alerts) -> tuple[pd.DataFrame, list[str]]:
    """Features of every real alert (candid as a column) and the feature names."""
    try:
        from operators.vra.features import FEATURE_COLUMNS, features_table

        return features_table(alerts).reset_index(), list(FEATURE_COLUMNS)
    except ImportError:
        table = fallback_features(alerts)
        return table, [c for c in table.columns if c not in ("candid", "objectId")]


@pytest.fixture(scope="module")
def real_pool(alerts, feature_table) -> tuple[pd.DataFrame, list[str]]:
    """Real alerts' features joined with their catalogue proxy labels (22 of 35)."""
    table, features = feature_table
    labels = proxy_labels_table(alerts)
    return table.merge(labels[["candid", "label"]], on="candid"), features


# ------------------------------------------------------------ labels and targets


def test_label_table_maps_every_label_to_both_targets():
    assert set(LABEL_TABLE) == {"real", "extragal", "gal", "agn", "bogus", "varstar"}
    assert LABEL_KEYS == {"r": "real", "x": "extragal", "g": "gal", "a": "agn", "b": "bogus", "v": "varstar"}
    gal = TARGETS["galactic"].encode(list(LABEL_TABLE))
    assert dict(zip(LABEL_TABLE, gal)) == pytest.approx(
        {"real": math.nan, "extragal": 0, "gal": 1, "agn": 0, "bogus": math.nan, "varstar": 1}, nan_ok=True)
    rb = TARGETS["real_bogus"].encode(list(LABEL_TABLE))
    assert dict(zip(LABEL_TABLE, rb)) == {"real": 1, "extragal": 1, "gal": 1, "agn": 1, "bogus": 0, "varstar": 1}
    with pytest.raises(ValueError, match="valid labels"):
        TARGETS["galactic"].encode(["gal", "galaxy"])


def test_proxy_labels_of_the_real_sample(alerts):
    by_id = {a["objectId"]: proxy_label(a) for a in alerts}
    assert by_id["ZTF18abvcdqu"][0] == "varstar"  # SIMBAD RRLyr
    assert by_id["ZTF25acldfsf"] == ("extragal", "TNS SN Ia")
    assert by_id["ZTF26aamcbly"][0] == "gal"  # Gaia parallax 0.88 +/- 0.03 mas
    assert by_id["ZTF26aaoqcvo"][0] == "agn"  # Gaia class AGN
    assert by_id["ZTF26aaklfaa"][0] is None


# ------------------------------------------------------------ query strategies


def test_uncertainty_picks_the_most_uncertain_rows_not_the_first():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.0, 0.2, 200)  # confident "class 0" everywhere...
    p[:10] = 0.01
    uncertain = np.array([17, 53, 101, 150, 199])
    p[uncertain] = [0.5, 0.45, 0.58, 0.62, 0.38]  # ...except these, |p - 0.5| = 0, .05, .08, .12, .12
    picked = select_batch(p, 5, "uncertainty", np.random.default_rng(0))
    assert list(picked[:3]) == [17, 53, 101]
    assert set(picked) == set(uncertain)
    for strategy in ("margin", "entropy"):  # same ranking for two classes
        assert set(select_batch(p, 5, strategy, np.random.default_rng(0))) == set(uncertain)


def test_query_scores_are_these_literal_values():
    """Scores written out by hand (entropy from scipy, natural log): the batch takes the highest."""
    from scipy.stats import entropy

    two = np.array([0.5, 0.45, 0.9, 0.0])  # P(class 1)
    np.testing.assert_allclose(query_scores(two, "uncertainty"), [0.0, -0.05, -0.4, -0.5], atol=1e-12)
    np.testing.assert_allclose(query_scores(two, "margin"), [0.0, -0.1, -0.8, -1.0], atol=1e-12)
    np.testing.assert_allclose(query_scores(two, "entropy"),
                               [math.log(2), entropy([0.55, 0.45]), entropy([0.1, 0.9]), 0.0], atol=1e-12)
    three = np.array([[0.40, 0.40, 0.20], [0.45, 0.30, 0.25], [0.34, 0.33, 0.33]])
    np.testing.assert_allclose(query_scores(three, "uncertainty"), [0.60, 0.55, 0.66], atol=1e-12)  # 1 - max p
    np.testing.assert_allclose(query_scores(three, "margin"), [0.0, -0.15, -0.01], atol=1e-12)
    np.testing.assert_allclose(query_scores(three, "entropy"), [entropy(r) for r in three], atol=1e-12)
    assert entropy([0.40, 0.40, 0.20]) == pytest.approx(1.0549201679861442)  # -(2 * .4 ln .4 + .2 ln .2)


def test_ties_are_broken_at_random_and_random_strategy_differs():
    flat = np.full(100, 0.3)  # an uninformative model: every row ties
    picked = select_batch(flat, 10, "uncertainty", np.random.default_rng(0))
    assert list(picked) != list(range(10))
    assert len(set(picked)) == 10
    p = np.linspace(0, 1, 101)
    assert set(select_batch(p, 5, "random", np.random.default_rng(0))) != {48, 49, 50, 51, 52}


def test_margin_and_entropy_differ_from_least_confident_with_three_classes():
    proba = np.array([[0.40, 0.40, 0.20], [0.45, 0.30, 0.25], [0.34, 0.33, 0.33]])
    assert select_batch(proba, 1, "uncertainty", np.random.default_rng(0))[0] == 2
    assert select_batch(proba, 1, "margin", np.random.default_rng(0))[0] == 0
    assert select_batch(proba, 1, "entropy", np.random.default_rng(0))[0] == 2


def test_balanced_sampling_alternates_predicted_classes():
    p = np.array([0.9] * 50 + [0.2, 0.1, 0.05])  # almost everything predicted class 1
    picked = select_batch(p, 6, "uncertainty", np.random.default_rng(0), balanced=True)
    predicted = (p[picked] > 0.5).astype(int)
    assert sorted(predicted) == [0, 0, 0, 1, 1, 1]
    assert list(predicted) in ([0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0])  # classes take turns
    assert list(p[picked][predicted == 0]) == [0.2, 0.1, 0.05]


# ------------------------------------------------------------ metrics


@settings(max_examples=25, deadline=None, database=None)  # no .hypothesis/ in the repo
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=60))
def test_metrics_match_scikit_learn(pairs):
    from sklearn import metrics as skm

    y_true, y_pred = (np.array(v) for v in zip(*pairs))
    scores, cm = classification_metrics(y_true, y_pred, ("extragal", "gal"))
    p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1], zero_division=0)
    assert scores["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for i, name in enumerate(("extragal", "gal")):
        assert scores[f"precision_{name}"] == pytest.approx(p[i])
        assert scores[f"recall_{name}"] == pytest.approx(r[i])
        assert scores[f"f1_{name}"] == pytest.approx(f[i])
    assert scores["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", labels=[0, 1],
                                                            zero_division=0))
    assert scores["precision_macro"] == pytest.approx(p.mean())
    assert (cm == skm.confusion_matrix(y_true, y_pred, labels=[0, 1])).all()


def test_metrics_on_a_known_split_of_the_real_alerts(real_pool):
    from sklearn import metrics as skm
    from sklearn.inspection import permutation_importance

    pool, features = real_pool
    y = TARGETS["galactic"].encode(pool["label"]).to_numpy()
    train, test = np.arange(len(pool)) % 3 != 0, np.arange(len(pool)) % 3 == 0
    model = fit_classifier(pool.loc[train, features], y[train], ClassifierConfig(min_samples_leaf=2))
    pred = model.predict(pool.loc[test, features])
    scores, cm = classification_metrics(y[test], pred)
    assert scores["accuracy"] == pytest.approx(skm.accuracy_score(y[test], pred))
    assert scores["f1_macro"] == pytest.approx(skm.f1_score(y[test], pred, average="macro", zero_division=0))
    assert (cm == skm.confusion_matrix(y[test], pred, labels=[0, 1])).all()
    # The importance table is scikit-learn's permutation importance.
    ours = permutation_importance_table(model, pool.loc[test, features], y[test], n_repeats=2, seed=3)
    theirs = permutation_importance(model, pool.loc[test, features], y[test].astype(int), n_repeats=2,
                                    random_state=3, scoring="f1_macro")
    assert ours.set_index("feature").loc[features, "importance_mean"].to_numpy() == pytest.approx(
        theirs.importances_mean)


def test_all_nan_feature_columns_do_not_break_training():
    X = pd.DataFrame({"a": np.arange(10.0), "ebv": np.nan})
    model = fit_classifier(X, np.arange(10) % 2, ClassifierConfig(min_samples_leaf=1))
    assert model.predict(X.assign(ebv=0.3)).shape == (10,)
    with pytest.raises(ValueError, match="only class"):
        fit_classifier(X, np.zeros(10))


# ------------------------------------------------------------ simulated loop + MLflow


def small_config(**kw) -> LoopConfig:
    base = dict(first_batch=8, batch_size=4, max_labels=12, importance_repeats=2,
                classifier=ClassifierConfig(min_samples_leaf=2, max_iter=30))
    base.update(kw)
    return LoopConfig(**base)


def test_simulated_rounds_add_batches_and_report_class_counts(real_pool):
    pool, features = real_pool
    rounds = simulate(pool, small_config(), features=features)
    assert list(rounds["round"]) == [0, 1]
    assert list(rounds["n_labels"]) == [8, 12]
    assert (rounds["train_gal"] + rounds["train_extragal"] == rounds["n_labels"]).all()
    assert {"accuracy", "f1_macro", "recall_gal", "precision_extragal", "holdout_gal"} <= set(rounds.columns)


def test_real_bogus_target_runs_through_the_same_loop():
    pool = synthetic_pool(300, seed=1)
    rounds = simulate(pool, small_config(target="real_bogus", importance_repeats=0, max_labels=16))
    assert {"f1_real", "f1_bogus", "train_bogus"} <= set(rounds.columns)
    assert "f1_gal" not in rounds.columns


def test_mlflow_runs_hold_named_params_metrics_and_artifacts(real_pool, tmp_path):
    import mlflow

    from models.vetting.tracking import Tracking, log_round

    pool, features = real_pool
    config = small_config()
    tracking = Tracking(uri=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    simulate(pool, config, features=features, on_round=lambda r: log_round(r, config, tracking))

    client = mlflow.MlflowClient(tracking.resolved_uri())
    experiment = client.get_experiment_by_name("gal_model_AL")
    assert experiment.artifact_location == str(tmp_path / "store" / "artifacts")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"round_0_uncertainty", "round_1_uncertainty"}
    run = runs["round_1_uncertainty"]
    params = run.data.params
    assert params["strategy"] == "uncertainty" and params["target"] == "galactic"
    assert params["n_labels"] == "12" and params["batch_size"] == "4" and params["first_batch"] == "8"
    assert params["learning_rate"] == "0.1" and params["l2_regularization"] == "10.0"
    assert params["max_iter"] == "30" and params["class_weight"] == "none"
    metrics = run.data.metrics
    for name in ("accuracy", "precision_gal", "recall_extragal", "f1_gal", "f1_extragal", "f1_macro",
                 "precision_macro", "recall_macro", "cm_gal_as_extragal", "train_gal", "holdout_extragal"):
        assert name in metrics, name
    assert metrics["n_labels"] == 12
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"permutation_importance.csv", "permutation_importance.png", "confusion_matrix.csv",
            "next_batch.csv"} <= artifacts
    importance = pd.read_csv(client.download_artifacts(run.info.run_id, "permutation_importance.csv",
                                                       str(tmp_path)))
    assert sorted(importance["feature"]) == sorted(features)
    model = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model")
    assert model.predict(pool[features]).shape == (len(pool),)
    assert not (tmp_path / "mlruns").exists()


# ------------------------------------------------------------ live round


def test_live_round_cold_start_then_queries_unlabelled_alerts(feature_table, alerts, tmp_path):
    table, features = feature_table
    table_path = tmp_path / "fink_vra.parquet"
    table.set_index("candid").to_parquet(table_path)  # indexed by candid, as the flow writes it
    labels_path = tmp_path / "labeled.csv"
    config = small_config(first_batch=6, holdout_fraction=0.25)
    quiet = lambda *_: None  # noqa: E731

    cold = live_round(table_path, labels_path, config, tmp_path / "al", tracking=None, say=quiet)
    assert cold.result is None and len(cold.queue) == 6
    for row in proxy_labels_table(alerts).itertuples():
        append_label(labels_path, row.candid, row.objectId, row.label)
    first = live_round(table_path, labels_path, config, tmp_path / "al", tracking=None, say=quiet)
    queue = pd.read_csv(first.queue_path)
    labelled = set(read_labels(labels_path)["candid"])
    assert len(queue) == 4 and not set(queue["candid"]) & labelled
    assert set(queue["candid"]) <= set(table["candid"])
    assert queue["p_positive"].between(0, 1).all()
    second = live_round(table_path, labels_path, config, tmp_path / "al", tracking=None, say=quiet)
    rounds = pd.read_csv(tmp_path / "al" / "rounds.csv")
    assert list(rounds["round"]) == [0, 1] and second.result.round == 1
    assert {"train_gal", "train_extragal", "holdout_gal", "accuracy"} <= set(rounds.columns)


# ------------------------------------------------------------ labelling CLI


def test_labelling_cli_appends_exactly_what_was_keyed(alerts, tmp_path):
    labels = tmp_path / "labeled.csv"
    keys = "g\nx\ns\nz\nb\nq\n"  # z is not a key: asked again, then b
    done = subprocess.run(
        [sys.executable, "-m", "models.vetting.labeling", "label", "--alerts", str(ZTF_FILES[0]),
         "--labels", str(labels), "--plots", str(tmp_path / "plots")],
        input=keys, capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    first = alerts[0]
    assert f"https://lasair-ztf.lsst.ac.uk/objects/{first['objectId']}/" in out
    assert f"https://fink-portal.org/{first['objectId']}" in out
    png = tmp_path / "plots" / f"{first['objectId']}_{first['candid']}.png"
    assert str(png) in out and png.read_bytes()[:4] == b"\x89PNG"
    assert "'z' is not a label key" in out
    table = read_labels(labels)
    expected = [(alerts[0], "gal"), (alerts[1], "extragal"), (alerts[3], "bogus")]
    assert list(table.columns) == LABEL_COLUMNS
    assert [(r.candid, r.objectId, r.label) for r in table.itertuples()] == [
        (a["candid"], a["objectId"], lab) for a, lab in expected]
    assert labels.read_text().count("candid,objectId") == 1

    # A second session skips what is labelled and follows the queue's order.
    queue = pd.DataFrame({"candid": [alerts[0]["candid"], alerts[5]["candid"], alerts[4]["candid"]]})
    summary = label_session(alerts, labels, tmp_path / "plots", queue=queue,
                            stdin=io.StringIO("v a"), stdout=io.StringIO(), hints=False)
    assert summary.labelled == 2
    assert list(read_labels(labels)["label"]) == ["gal", "extragal", "bogus", "varstar", "agn"]
    assert list(read_labels(labels)["candid"][-2:]) == [alerts[5]["candid"], alerts[4]["candid"]]


def test_interrupted_session_leaves_a_valid_file(alerts, tmp_path):
    class KeysThenCtrlC(io.StringIO):
        def read(self, n=-1):
            char = super().read(n)
            if not char:
                raise KeyboardInterrupt
            return char

    labels = tmp_path / "labeled.csv"
    with pytest.raises(KeyboardInterrupt):
        label_session(alerts, labels, tmp_path / "plots", stdin=KeysThenCtrlC("r x"), stdout=io.StringIO())
    assert list(read_labels(labels)["label"]) == ["real", "extragal"]
    # A torn line (crash mid-write) is skipped, and the next label starts a fresh line.
    with open(labels, "a") as f:
        f.write("3367")
    append_label(labels, alerts[2]["candid"], alerts[2]["objectId"], "gal")
    with pytest.warns(UserWarning, match="incomplete"):
        assert list(read_labels(labels)["label"]) == ["real", "extragal", "gal"]


# ------------------------------------------------------------ experiments


def test_experiments_command_plots_learning_curves_with_random_baseline(tmp_path, capsys):
    out = tmp_path / "exp"
    code = al_main(["experiments", "--pool", "synthetic:400", "--strategies", "uncertainty",
                    "--seeds", "2", "--max-labels", "50", "--out", str(out)])
    assert code == 0
    for metric in ("f1_macro", "accuracy"):
        assert (out / f"learning_curves_{metric}.png").read_bytes()[:4] == b"\x89PNG"
    rounds = pd.read_csv(out / "rounds.csv")
    assert set(rounds["strategy"]) == {"uncertainty", "random"}
    assert set(rounds["seed"]) == {0, 1}
    assert list(rounds.query("strategy == 'random' and seed == 0")["n_labels"]) == [30, 40, 50]
    summary = pd.read_csv(out / "summary.csv")
    assert {"f1_macro_mean", "f1_macro_std", "accuracy_mean"} <= set(summary.columns)
    assert "labels" in capsys.readouterr().out
