"""What a PromQL expression asks of the series it reads, checked against a real scrape.

promql-parser parses; this module walks its syntax tree and follows the labels through it: every
selected metric must be a sample name a collector exported (so ``_total``, ``_bucket``, ``_sum``,
``_count`` must be right), every label matched, grouped by or matched on must be one those series
carry, an ``=`` / ``!=`` value must be one they were seen with, and the labels an expression's
result carries are worked out so that legends and alert annotations can be checked against them.
"""

from __future__ import annotations

from collections import defaultdict

import promql_parser as promql
from prometheus_client.parser import text_string_to_metric_families

# Labels Prometheus attaches to every scraped series, and the series it makes itself.
TARGET_LABELS = frozenset({"job", "instance"})
SCRAPE_SERIES = {"up": {}}

# Functions whose result keeps the labels of their (first) vector argument.
_KEEPS_LABELS = {
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "predict_linear",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "quantile_over_time", "stddev_over_time", "abs", "ceil", "floor", "round",
    "clamp", "clamp_min", "clamp_max", "exp", "ln", "log2", "log10", "sqrt", "sort", "sort_desc",
    "timestamp",
}
_NO_LABELS = {"vector", "time", "scalar", "pi"}


class Exported:
    """Sample names of one or more scrapes, with each label's values seen."""

    def __init__(self) -> None:
        self.series: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    def add_scrape(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = self.series[sample.name]
                for key, value in sample.labels.items():
                    labels[key].add(value)

    def labels(self, name: str) -> dict[str, set[str]] | None:
        if name in SCRAPE_SERIES:
            return SCRAPE_SERIES[name]
        return self.series.get(name)


class Usage:
    """Check expressions against ``exported``; problems accumulate in ``problems``."""

    def __init__(self, exported: Exported) -> None:
        self._exported = exported
        self.problems: list[str] = []
        self.metrics: set[str] = set()

    def check(self, expr: str, where: str) -> frozenset[str]:
        """The labels the result of ``expr`` carries; problems are recorded against ``where``."""
        try:
            tree = promql.parse(expr)
        except ValueError as exc:
            self.problems.append(f"{where}: not valid PromQL: {exc}: {expr}")
            return frozenset()
        self._where = where
        return self._labels(tree)

    def _problem(self, text: str) -> None:
        self.problems.append(f"{self._where}: {text}")

    def _require(self, labels: list[str], available: frozenset[str], what: str) -> None:
        for label in labels:
            if label not in available:
                self._problem(f"{what} uses label {label!r}, which its input does not carry ({sorted(available)})")

    def _labels(self, node: object) -> frozenset[str]:
        if isinstance(node, promql.VectorSelector):
            return self._selector(node)
        if isinstance(node, promql.MatrixSelector):
            return self._selector(node.vector_selector)
        if isinstance(node, promql.SubqueryExpr | promql.ParenExpr | promql.UnaryExpr):
            return self._labels(node.expr)
        if isinstance(node, promql.NumberLiteral | promql.StringLiteral):
            return frozenset()
        if isinstance(node, promql.AggregateExpr):
            return self._aggregate(node)
        if isinstance(node, promql.BinaryExpr):
            return self._binary(node)
        if isinstance(node, promql.Call):
            return self._call(node)
        raise AssertionError(f"unexpected PromQL node {type(node).__name__} in {self._where}")

    def _selector(self, node: promql.VectorSelector) -> frozenset[str]:
        name = node.name
        exported = self._exported.labels(name) if name else None
        if exported is None:
            self._problem(f"metric {name!r} is not exported by the collector")
            return TARGET_LABELS
        self.metrics.add(name)
        available = TARGET_LABELS | frozenset(exported)
        for matcher in node.matchers.matchers:
            if matcher.name not in available:
                self._problem(f"{name} has no label {matcher.name!r} (it has {sorted(available)})")
            elif (
                matcher.op in (promql.MatchOp.Equal, promql.MatchOp.NotEqual)
                and matcher.name not in TARGET_LABELS
                and matcher.value not in exported[matcher.name]
            ):
                self._problem(
                    f"{name}{{{matcher.name}{'=' if matcher.op == promql.MatchOp.Equal else '!='}{matcher.value!r}}}: "
                    f"the collector exported only {sorted(exported[matcher.name])}"
                )
        return available

    def _aggregate(self, node: promql.AggregateExpr) -> frozenset[str]:
        inner = self._labels(node.expr)
        if node.param is not None:
            self._labels(node.param)
        modifier = node.modifier
        if modifier is None:
            return frozenset()
        by = modifier.type == promql.AggModifierType.By
        self._require(modifier.labels, inner, f"{node.op} {'by' if by else 'without'} (...)")
        if by:
            return frozenset(modifier.labels)
        return inner - set(modifier.labels)

    def _binary(self, node: promql.BinaryExpr) -> frozenset[str]:
        lhs, rhs = self._labels(node.lhs), self._labels(node.rhs)
        if _is_scalar(node.lhs):
            return rhs
        if _is_scalar(node.rhs):
            return lhs
        modifier = node.modifier
        if modifier is not None and modifier.matching is not None:
            if modifier.matching.type == promql.LabelModifierType.Include:
                self._require(modifier.matching.labels, lhs & rhs, "on(...)")
            else:
                self._require(modifier.matching.labels, lhs | rhs, "ignoring(...)")
        card = modifier.card if modifier is not None else None
        group = list(modifier.group_labels) if modifier is not None and modifier.group_labels else []
        if card == promql.VectorMatchCardinality.ManyToOne:
            self._require(group, rhs, "group_left(...)")
            return lhs | frozenset(group)
        if card == promql.VectorMatchCardinality.OneToMany:
            self._require(group, lhs, "group_right(...)")
            return rhs | frozenset(group)
        if str(node.op) == "or":
            return lhs & rhs  # a series may come from either side
        return lhs

    def _call(self, node: promql.Call) -> frozenset[str]:
        name = node.func.name
        args = [self._labels(arg) for arg in node.args]
        if name == "histogram_quantile":
            self._require(["le"], args[1], "histogram_quantile")
            return args[1] - {"le"}
        if name in ("absent", "absent_over_time"):
            selector = node.args[0]
            selector = getattr(selector, "vector_selector", selector)
            if isinstance(selector, promql.VectorSelector):
                return frozenset(m.name for m in selector.matchers.matchers if m.op == promql.MatchOp.Equal)
            return frozenset()
        if name in _NO_LABELS:
            return frozenset()
        if name in _KEEPS_LABELS:
            vectors = [labels for arg, labels in zip(node.args, args) if not _is_scalar(arg)]
            return vectors[0] if vectors else frozenset()
        raise AssertionError(f"{self._where}: function {name} is not known to this check; add it")


def _is_scalar(node: object) -> bool:
    if isinstance(node, promql.ParenExpr | promql.UnaryExpr):
        return _is_scalar(node.expr)
    if isinstance(node, promql.BinaryExpr):
        return _is_scalar(node.lhs) and _is_scalar(node.rhs)
    return isinstance(node, promql.NumberLiteral) or (
        isinstance(node, promql.Call) and node.func.name in ("scalar", "time", "pi")
    )


def numbers(expr: str) -> list[float]:
    """Every number literal in ``expr``."""
    found: list[float] = []

    def visit(node: object) -> None:
        if isinstance(node, promql.NumberLiteral):
            found.append(node.val)

    promql.walk(promql.parse(expr), visit)
    return found
