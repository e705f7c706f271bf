"""``results.md`` and the nDCG@10 plot from the run's raw numbers (``<out>/results.json``).

Everything in the table is read from what the run measured; nothing is typed in. Means and standard
deviations are over the training seeds (sample std, n - 1; 0 with one seed).
"""

from __future__ import annotations

import platform
import statistics
from pathlib import Path

from experiments.negatives.stats import fmt_p

METRICS = (("ndcg@10", "nDCG@10"), ("recall@100", "Recall@100"), ("mrr@10", "MRR@10"))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def precision_recall(table: dict) -> tuple[float | None, float | None]:
    tp, fn = table["human_1"]["judge_1"], table["human_1"]["judge_0"]
    fp = table["human_0"]["judge_1"]
    return (tp / (tp + fp) if tp + fp else None), (tp / (tp + fn) if tp + fn else None)


def paired_lines(raw: dict) -> list[str]:
    """Each variant vs ``default``, paired over the test queries (``stats.py``), beside its agreement with the
    known false negatives: "a better judge -> a better model" is read off one table."""
    lines = ["| variant | Δ nDCG@10 vs default | 95 % CI (bootstrap over queries) | paired t p | Wilcoxon p "
             "| queries better / worse / tied | resolved | κ vs known FN | precision | recall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v, p in raw.get("paired", {}).items():
        a = raw.get("agreement", {}).get(v)
        if a:
            prec, rec = precision_recall(a["overall"]["table"])
            agree = f"{fmt(a['overall']['kappa'])} | {fmt(prec)} | {fmt(rec)}"
        elif v.startswith("oracle"):
            agree = "1.000 | 1.000 | 1.000"  # the known labels themselves
        else:
            agree = "– | – | –"
        name = "base (no fine-tuning)" if v == "base" else v
        lines.append(f"| {name} | {fmt(p['mean_diff'], 4, sign=True)} | [{fmt(p['ci_low'], 4, sign=True)}, "
                     f"{fmt(p['ci_high'], 4, sign=True)}] | {fmt_p(p['t_p'])} | {fmt_p(p['wilcoxon_p'])} "
                     f"| {p['wins']} / {p['losses']} / {p['ties']} | {'yes' if p['resolved'] else 'no'} | {agree} |")
    return lines


def control_lines(raw: dict) -> list[str]:
    """A variant against its control, paired over the queries (e.g. the known FNs dropped vs as many at random)."""
    out = []
    for name, p in raw.get("controls", {}).items():
        ci = f"{fmt(p['mean_diff'], 4, sign=True)}, CI [{fmt(p['ci_low'], 4, sign=True)}, {fmt(p['ci_high'], 4, sign=True)}]"
        out.append(f"- Control, {name} (the same number of negatives dropped per row, the variant's choice vs at random): "
                   f"{ci}, paired t p {fmt_p(p['t_p'])}, Wilcoxon p {fmt_p(p['wilcoxon_p'])}: "
                   + ("resolved." if p["resolved"] else "not resolved."))
    return out


def verdicts(raw: dict) -> list[str]:
    """The paired table in words: which differences from ``default`` are resolved, and which way."""
    out = []
    for v, p in raw.get("paired", {}).items():
        name = "the base model" if v == "base" else f"`{v}`"
        ci = f"{fmt(p['mean_diff'], 4, sign=True)}, CI [{fmt(p['ci_low'], 4, sign=True)}, {fmt(p['ci_high'], 4, sign=True)}]"
        if p["resolved"]:
            way = "better" if p["mean_diff"] > 0 else "worse"
            out.append(f"- {name} is **{way}** than `default` ({ci}): resolved, the CI excludes 0.")
        else:
            out.append(f"- {name} vs `default` ({ci}): **not resolved**, the CI includes 0.")
    seeds = len(raw["facts"]["seeds"])
    if seeds < 2:
        out.append("- One seed: the paired test covers the test queries' sampling, not training noise.")
    return out


def table(raw: dict) -> list[str]:
    metrics, counts = raw["metrics"], raw["counts"]
    base = metrics["base"][0]
    default_mean = mean_std([m["ndcg@10"] for m in metrics["default"]])[0] if "default" in metrics else None
    head = ("| variant | rows | positives | negatives | judged rows | judge calls | nDCG@10 | Recall@100 | MRR@10 "
            "| Δ nDCG@10 vs base | Δ nDCG@10 vs default | nDCG@10 per seed |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    lines.append("| base (no fine-tuning) | – | – | – | – | 0 | " + " | ".join(fmt(base[k]) for k, _ in METRICS)
                 + " | – | " + (fmt(base["ndcg@10"] - default_mean, sign=True) if default_mean is not None else "n/a")
                 + " | – |")
    for v, runs in metrics.items():
        if v == "base":
            continue
        c = counts[v]
        cells = []
        for key, _ in METRICS:
            m, s = mean_std([r[key] for r in runs])
            cells.append(f"{m:.3f} ± {s:.3f}")
        nd = mean_std([r["ndcg@10"] for r in runs])[0]
        lines.append(
            f"| {v} | {c['rows']} | {c['positives']} | {c['negatives']} | {c.get('judged_rows', '–')} "
            f"| {c['judge_answers']} | " + " | ".join(cells)
            + f" | {fmt(nd - base['ndcg@10'], sign=True)} | "
            + (fmt(nd - default_mean, sign=True) if default_mean is not None else "n/a")
            + " | " + ", ".join(f"{r['ndcg@10']:.3f}" for r in runs) + " |")
    return lines


def agreement_lines(raw: dict) -> list[str]:
    lines = ["| variant | config | pairs | κ | precision | recall | FN found (H1J1) | FN missed (H1J0) "
             "| true negatives flagged (H0J1) | agreed negatives (H0J0) | unmatched |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, a in raw["agreement"].items():
        o = a["overall"]
        p, r = precision_recall(o["table"])
        t = o["table"]
        unmatched = ", ".join(f"{k} {n}" for k, n in sorted(a.get("unmatched", {}).items())) or "0"
        lines.append(f"| {v} | `{a['config']}` | {o['n']} | {fmt(o['kappa'])} | {fmt(p)} | {fmt(r)} "
                     f"| {t['human_1']['judge_1']} | {t['human_1']['judge_0']} | {t['human_0']['judge_1']} "
                     f"| {t['human_0']['judge_0']} | {unmatched} |")
    return lines


def plot(raw: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = raw["metrics"]
    names = [v for v in metrics if v != "base"]
    stats = [mean_std([r["ndcg@10"] for r in metrics[v]]) for v in names]
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(names)), 4.5), dpi=120)
    ax.bar(names, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=5, color="#4c72b0")
    for i, v in enumerate(names):
        ax.scatter([i] * len(metrics[v]), [r["ndcg@10"] for r in metrics[v]], color="black", s=10, zorder=3)
    ax.axhline(metrics["base"][0]["ndcg@10"], color="#c44e52", linestyle="--", label="base MiniLM (no fine-tuning)")
    lo = min([m - s for m, s in stats] + [metrics["base"][0]["ndcg@10"]])
    hi = max([m + s for m, s in stats] + [metrics["base"][0]["ndcg@10"]])
    pad = max(0.01, (hi - lo) * 0.5)
    ax.set_ylim(lo - pad, hi + pad)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.set_ylabel(f"nDCG@10 ({raw['facts'].get('title', 'SciFact')} test)")
    n = len(raw["facts"]["seeds"])
    ax.set_title(f"MiniLM fine-tuned per training-set variant: mean ± std over {n} seed(s), dots = seeds")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write(path: Path, raw: dict, plot_path: Path) -> Path:
    f = raw["facts"]
    plot(raw, plot_path)
    t = f["timings"]
    title, name = f["title"], f["dataset"]
    judge_s = sum(v for k, v in t.items() if k.startswith("build ") and k.split()[1] in ("rlhn", "arhn", "clear"))
    train_s = [v for k, v in t.items() if k.startswith("train+evaluate")]
    share = f["known_fn_train"] / f["negatives_train"] if f["negatives_train"] else 0.0
    judged_kind = ("half with a known false negative, half without" if f["balanced_judged"]
                   else "a seeded draw of the training rows")
    rows_kind = ("every row with a known false negative + a seeded draw of the others" if f["fn_first"]
                 else "a seeded draw of the mined train queries")
    lines = [
        f"# Does cleaning the negatives help? {title}",
        "",
        f"Written by `python -m experiments.negatives --dataset {name}" + (" --quick" if f["quick"] else "") + "` "
        "(`experiments/negatives/run.py`); every number below is what that run measured."
        + (" **Quick mode: the machinery only, the numbers mean nothing.**" if f["quick"] else ""),
        "",
        f"- Data: {f['licence']}: {f['corpus_docs']:,} documents, {f['mined_rows']:,} train queries mined, "
        f"TEST split of {f['test_queries']} queries (graded nDCG@10 where the labels are graded).",
        f"- Mining: bundled all-MiniLM-L6-v2 ({f['max_length']} tokens), top {f['negatives']} minus the labelled "
        f"positive; a query with ≥ 2 labelled positives keeps one (seeded), the other {f['held_out']:,} are held out "
        f"as unlabelled; {f['known_fn_all']:,} of them were mined as negatives (of {f['negatives_all']:,}) = the "
        "known false negatives.",
        f"- Training rows: {f['train_rows']:,} ({rows_kind}): {f['fn_rows_train']:,} rows hold "
        f"{f['known_fn_train']:,} known false negatives among {f['negatives_train']:,} negatives ({share:.1%}); "
        "the same rows for every variant.",
        f"- Judged rows: {f['judged_rows']} of them ({judged_kind}; {f['judged_fn_rows']} with a known false "
        f"negative, {f['known_fn_judged']} pairs); ARHN judges {f['arhn_rows']} of those ({f['arhn_fn_rows']} with a "
        f"known false negative: its snippet extraction is the slowest judge step on CPU); judges: {f['judges']}. "
        "Rows not judged stay as in `default`.",
        f"- Training: `{f['train_config']}`, identical for every variant; seeds "
        f"{', '.join(map(str, f['seeds']))}" + (f"; max_steps {f['max_steps']}" if f["max_steps"] else "") + ".",
        f"- Runtime of this invocation: {f['total_seconds'] / 60:.1f} min (judged builds {judge_s / 60:.1f} min, "
        f"{len(train_s)} train+evaluate runs {sum(train_s) / 60:.1f} min, "
        f"{statistics.fmean(train_s) if train_s else 0:.0f} s each"
        + (f"; {earlier} (variant, seed) runs were finished by an earlier invocation of the same command and reused, "
           "untimed here" if (earlier := sum(len(r) for v, r in raw["metrics"].items() if v != "base") - len(train_s)
                                         - len(f.get("reused", {}))) else "")
        + f"); machine: {platform.machine()}, {f.get('cores', '?')} cores, "
        f"load average before/after: {f.get('load_before', 'n/a')} / {f.get('load_after', 'n/a')}.",
        *([f"- Runs reused because their training rows are byte-identical to another variant's (same rows, config "
           f"and seed train the same model): {', '.join(f'{k} = {v}' for k, v in f['reused'].items())}."]
          if f.get("reused") else []),
        "",
        f"## nDCG@10, Recall@100, MRR@10 on the {title} TEST split (mean ± std over seeds)",
        "",
        *table(raw),
        "",
        "`judge calls`: judge answers the build used (made now, or read back from its judgment store). "
        "`judged rows`: rows whose training copy is the method's output.",
        "",
        f"![nDCG@10 per variant]({plot_path.name})",
        "",
        "## Paired test against `default` over the test queries",
        "",
        "Per query, nDCG@10 averaged over the seeds; the difference variant − default per query; over the "
        f"{next(iter(raw['paired'].values()))['queries'] if raw.get('paired') else 0} queries: mean, percentile "
        "bootstrap 95 % CI (10,000 resamples), two-sided paired t and Wilcoxon signed-rank p. Resolved = the CI "
        "excludes 0. κ / precision / recall: the method's decisions against the known false negatives on the rows "
        "it saw (next section).",
        "",
        *paired_lines(raw),
        "",
        *verdicts(raw),
        *control_lines(raw),
        "",
        "## Each method against the known false negatives (`builders.agreement`)",
        "",
        "Pairs: every mined negative of the rows the method saw (judged rows; PercPos: all training rows), "
        "label 1 = a known false negative. A pair the method removed from the negatives (relabelled or "
        "dropped) counts as judged false negative.",
        "",
        *agreement_lines(raw),
        "",
        "## Timings (s)",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in t.items()],
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
