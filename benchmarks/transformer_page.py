"""The Markdown page of benchmarks/transformers.py, from its results alone (so a merged run re-renders every row)."""

from __future__ import annotations

from typing import Any

from harness import machine_line

DENSE = ("eager", "ort_fp32", "ort_int8", "openvino_fp32", "openvino_int8", "openvino_bf16", "openvino_int8+bf16")


def _vs(entry: dict[str, Any] | None) -> str:
    return f"{entry['speedup']:.2f}x ({entry['baseline']})" if entry else "n/a"


def _measured(counts: dict[str, list[int]]) -> tuple[int, int]:
    return sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())


def timing_section(results: dict[str, Any]) -> list[str]:
    rows = results["rows"]
    out = ["## Targets", "", "| target | measured | baseline | met |", "|---|---:|---|---|"]
    out += [f"| {t['target']} | {t['speedup']:.2f}x | {t['baseline']} | {'yes' if t['met'] else '**no**'} |"
            for t in results["targets"]]
    out += ["", "## Dense baselines (ms, median)", "",
            "| model | seq | batch | " + " | ".join(DENSE) + " |", "|---|---:|---:|" + "---:|" * len(DENSE)]
    seen = set()
    for r in rows:
        if (r["model"], r["seq"], r["batch"]) not in seen:
            seen.add((r["model"], r["seq"], r["batch"]))
            cells = [f"{r['dense_ms'][k]['median']:.2f}" if k in r["dense_ms"] else "-" for k in DENSE]
            out.append(f"| {r['model']} | {r['seq']} | {r['batch']} | " + " | ".join(cells) + " |")
    if results["missing"]:
        out += ["", "Missing baselines: " + "; ".join(f"{k}: {v}" for k, v in results["missing"].items())]
    out += ["", "## Compressed forms, each exported by slimkit and run in openvino+slimkit", "",
            "| model | form | seq | batch | ms | vs best dense engine | vs best fp32 | vs best int8 | vs eager torch "
            "| layers on slimkit's operators | artifact written |",
            "|---|---|---:|---:|---:|---|---|---|---|---|---|"]
    for r in rows:
        v, lines = r["vs"], r["layers"]
        ours = f"{lines['on_slimkit']}/{lines['candidates']}" + (
            f" ({', '.join(lines['operators'])})" if lines["operators"] else "")
        out.append(f"| {r['model']} | {r['form']} | {r['seq']} | {r['batch']} | {r['ms']['median']:.2f} ± "
                   f"{r['ms']['iqr']:.2f} | {_vs(v.get('best_dense'))} | {_vs(v.get('best_fp32'))} | "
                   f"{_vs(v.get('best_int8'))} | {_vs(v.get('eager'))} | {ours} | {lines['chosen']} |")
    out += ["", "'layers on slimkit's operators' is engine.json's count of candidate layers that became slimkit's "
            "operators (the kernel each node ran in brackets); every other layer runs OpenVINO's own kernel. "
            "'artifact written' is what export_folder chose by timing whole artifacts ('dense': none of slimkit's "
            "operators).", "", "## Sparsity asked and measured", "",
            "Counted back from each compressed model's weights (masked forms, before int8 rounding, over every layer "
            "slimkit's default selection prunes) or module shapes (heads and neurons).", "",
            "| model | form | asked | measured |", "|---|---|---|---|"]
    for s in results["sparsity"]:
        asked = s["asked"]
        if "share" in asked:
            before, after = sum(asked["groups_before"].values()), sum(s["counts"].values())
            out.append(f"| {s['model']} | {s['form']} | {asked['share']:.0%} of heads and of neurons | "
                       f"{before - after} of {before} groups removed |")
        else:
            zeros, total = _measured(s["counts"])
            out.append(f"| {s['model']} | {s['form']} | {asked['sparsity']:.0%} {asked['layout']} "
                       f"({asked['criterion']}) | {zeros}/{total} = {zeros / total:.2%} |")
    return out


def accuracy_section(accuracy: dict[str, Any], task_text: str) -> list[str]:
    task = accuracy["task"]
    out = ["## Accuracy kept by one-shot pruning", "", task_text, "",
           f"Trained {task['steps']} steps on {task['train']} samples, tested on {task['test']}: dense accuracy "
           f"**{accuracy['dense_accuracy']:.2%}**; the task's ceiling is {task['bayes']:.0%} (the most-frequent-"
           f"marker rule scores {task['rule_accuracy']:.2%} on this test set); chance {1 / task['classes']:.0%}.", "",
           "| criterion | layout | accuracy | kept (of dense) | measured sparsity |", "|---|---|---:|---:|---:|"]
    for r in accuracy["rows"]:
        zeros, total = _measured(r["counts"])
        out.append(f"| {r['criterion']} | {r['layout']} | {r['accuracy']:.2%} | {r['kept']:.1%} | "
                   f"{zeros}/{total} = {zeros / total:.2%} |")
    return out


def markdown(results: dict[str, Any], about: str, task_text: str) -> str:
    env = results["environment"]
    title = "# Transformers on CPU: slimkit's compressed forms against the best dense engine"
    out = [title + (" (SMOKE RUN: tiny shapes, not a measurement)" if env["smoke"] else ""), "",
           f"{machine_line(env)}; {env['threads']} threads for every form, torch {env['torch']}. Every ratio names "
           "its baseline; > 1 means the compressed form is faster.", "", about, ""]
    if results["rows"]:
        out += timing_section(results)
    if results["accuracy"]:
        out += ["", *accuracy_section(results["accuracy"], task_text)]
    out += ["", f"Reproduce: `{env['command']}` (commit {env['git_commit']}, {env['cpu_count']} CPUs, "
            f"wall time of this run {env['wall_s'] / 60:.1f} min). Medians ± IQR of {env['repeats']} samples per "
            "form in one process, the forms taking turns in blocks."]
    return "\n".join(out) + "\n"
