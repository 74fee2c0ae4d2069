"""Class taxonomies of the ORACLE hierarchical classifier, as data.

A taxonomy is a tree of class names. The network emits one logit per node in
breadth-first level order (root first, children in the order listed); the
conditional probability of a node given its parent is a softmax over its
sibling group, and its class probability is the product of conditional
probabilities from the root down (the root's is 1).

Inputs: logits `[B, n_nodes]`. Outputs: conditional and class probabilities of
the same shape, and names in level order or in pre-order (for display).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Taxonomy:
    name: str
    nodes: tuple[str, ...]  # level order, root first
    parent: tuple[int, ...]  # index of each node's parent, -1 for the root

    @classmethod
    def from_tree(cls, name: str, tree: dict) -> "Taxonomy":
        """Build from a nested dict `{root: {child: {...}, leaf: {}}}` (level order)."""
        (root, children), = tree.items()
        nodes, parent = [root], [-1]
        queue = [(0, children)]
        while queue:
            idx, kids = queue.pop(0)
            for child, grandkids in kids.items():
                nodes.append(child)
                parent.append(idx)
                queue.append((len(nodes) - 1, grandkids))
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"taxonomy {name!r} repeats a class name")
        return cls(name, tuple(nodes), tuple(parent))

    def __len__(self) -> int:
        return len(self.nodes)

    def children(self, i: int) -> list[int]:
        return [j for j, p in enumerate(self.parent) if p == i]

    @cached_property
    def sibling_groups(self) -> list[list[int]]:
        """Indices of each internal node's children (one softmax group each)."""
        return [kids for i in range(len(self.nodes)) if (kids := self.children(i))]

    @cached_property
    def leaves(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if not self.children(i)]

    @cached_property
    def depth(self) -> list[int]:
        d = [0] * len(self.nodes)
        for i in range(1, len(self.nodes)):
            d[i] = d[self.parent[i]] + 1
        return d

    @cached_property
    def preorder(self) -> list[int]:
        """Node indices in a depth-first pre-order walk, without the root."""
        out: list[int] = []

        def walk(i: int) -> None:
            for c in self.children(i):
                out.append(c)
                walk(c)

        walk(0)
        return out

    def conditional_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax within each sibling group; the root gets 1."""
        logits = np.asarray(logits, dtype=np.float64)
        out = np.ones_like(logits)
        for group in self.sibling_groups:
            z = logits[:, group]
            z = np.exp(z - z.max(axis=1, keepdims=True))
            out[:, group] = z / z.sum(axis=1, keepdims=True)
        return out

    def class_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Product of conditional probabilities from the root down to each node."""
        cond = self.conditional_probabilities(logits)
        out = cond.copy()
        # Level order guarantees a parent is finished before its children.
        for i in range(1, len(self.nodes)):
            out[:, i] = cond[:, i] * out[:, self.parent[i]]
        return out

    def predicted_leaf(self, class_probs: np.ndarray) -> list[str]:
        """The most probable leaf per row (leaves' class probabilities sum to 1)."""
        leaves = np.asarray(self.leaves)
        best = leaves[np.argmax(np.asarray(class_probs)[:, leaves], axis=1)]
        return [self.nodes[i] for i in best]


ZTF_TAXONOMY = Taxonomy.from_tree(
    "BTS",
    {
        "Alert": {
            "Persistent": {"AGN": {}, "CV": {}, "Varstar": {}},
            "Transient": {"SN-Ia": {}, "SN-II": {}, "SN-Ib/c": {}, "SLSN": {}},
        }
    },
)

LSST_TAXONOMY = Taxonomy.from_tree(
    "ELAsTiCC",
    {
        "Alert": {
            "Transient": {
                "SN": {"SNIa": {}, "SNIb/c": {}, "SNIax": {}, "SNI91bg": {}, "SNII": {}},
                "Fast": {"KN": {}, "Dwarf Novae": {}, "uLens": {}, "M-dwarf Flare": {}},
                "Long": {"SLSN": {}, "TDE": {}, "ILOT": {}, "CART": {}, "PISN": {}},
            },
            "Variable": {
                "Periodic": {"Cepheid": {}, "RR Lyrae": {}, "Delta Scuti": {}, "EB": {}},
                "AGN": {},
            },
        }
    },
)
