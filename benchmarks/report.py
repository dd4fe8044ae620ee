"""Reporting: the result table, the verdict on each target, the JSON file and the PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Run = dict[str, Any]

TARGET_CONCURRENCY = 32
#: Throughput at concurrency 32 against the ONNX Runtime fp32 raw ceiling of the same run.
MIN_SHARE_OF_RAW = 2.0
#: ... and against the best raw ceiling of the same run (any runtime).
MIN_SHARE_OF_BEST_RAW = 0.9
#: Concurrency-1 p50 against the ONNX Runtime fp32 raw single request.
MAX_LATENCY_RATIO = 0.6


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _errors(codes: dict[str, int]) -> str:
    bad = {code: n for code, n in codes.items() if code != "OK"}
    return ", ".join(f"{code} {n}" for code, n in sorted(bad.items())) or "-"


def format_table(points: list[dict[str, Any]]) -> str:
    """One row per (configuration, workload, concurrency)."""
    header = (
        f"{'config':14} {'workload':9} {'conc':>5} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'srv cpu%':>8} {'lg cpu%':>7} {'other%':>6} {'steal%':>6}  errors"
    )
    lines = [header, "-" * len(header)]
    for p in points:
        lines.append(
            f"{p['config']:14} {p['workload']:9} {p['concurrency']:>5} {p['throughput']:>7.1f} "
            f"{_ms(p['p50_ms']):>8} {_ms(p['p95_ms']):>8} {_ms(p['p99_ms']):>8} "
            f"{_pct(p['server_cpu_pct']):>8} {_pct(p['loadgen_cpu_pct']):>7} "
            f"{_pct(p.get('other_cpu_pct')):>6} {_pct(p.get('steal_pct')):>6}  "
            f"{_errors(p['codes'])}"
        )
    return "\n".join(lines)


def format_reference(run: Run) -> str:
    meta = run.get("meta", {})
    cpu = meta.get("cpu") or {}
    lines = [
        f"CPU: {cpu.get('model_name') or '?'}, flags {' '.join(cpu.get('flags') or []) or '-'}; "
        f"native bf16: {cpu.get('native_bf16')}"
        + (" (run with --no-bf16: VIGIL_PRECISION=fp32)" if meta.get("no_bf16") else "")
    ]
    for config, running in (meta.get("vigil_running") or {}).items():
        lines.append(
            f"vigil {config}: backend {running['backend']}, precision {running['precision']}"
        )
    raw_runtimes = run.get("raw_runtimes") or {"onnxruntime fp32": run.get("raw") or []}
    for runtime, results in raw_runtimes.items():
        for r in results:
            lines.append(
                f"raw {runtime:16} {r['workload']:9} {r['throughput']:7.1f} req/s "
                f"({r['best_layout']}, batch {r['batch_size']} faces)   single request p50 "
                f"{r['latency_p50_ms']:.1f} ms ({r['latency_variant']})"
            )
    peer = run.get("peer")
    if isinstance(peer, list):
        for r in peer:
            lines.append(
                f"face_recog. {r['workload']:9} {r['throughput']:7.2f} req/s (2 processes)"
                f"   single request p50 {r['latency_p50_ms']:.0f} ms"
            )
    elif isinstance(peer, dict):
        lines.append(f"face_recognition peer: skipped ({peer.get('skipped')})")
    return "\n".join(lines)


def _point(run: Run, config: str, workload: str, concurrency: int) -> dict[str, Any] | None:
    """The sweep point nearest to ``concurrency`` for this configuration and workload."""
    candidates: list[dict[str, Any]] = [
        p for p in run["points"] if p["config"] == config and p["workload"] == workload
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda p: abs(p["concurrency"] - concurrency))


def _get(row: dict[str, Any] | None, key: str) -> float | None:
    return None if row is None else row[key]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def targets(run: Run) -> dict[str, Any]:
    """The numbers the issue asks for, each with its target where it has one."""
    raw = {r["workload"]: r for r in run.get("raw") or []}
    best_raw: dict[str, dict[str, Any]] = {}
    for results in (run.get("raw_runtimes") or {}).values():
        for r in results:
            if r["throughput"] > best_raw.get(r["workload"], {}).get("throughput", 0.0):
                best_raw[r["workload"]] = r
    peer = {r["workload"]: r for r in run["peer"]} if isinstance(run.get("peer"), list) else {}
    on, off = run["configs"][0], "batching-off"
    interleaved = run.get("interleaved") or {}
    out: dict[str, Any] = {}
    for workload in ("template", "verify", "liveness"):
        at = _point(run, on, workload, TARGET_CONCURRENCY)
        if at is None:
            continue
        one = _point(run, on, workload, 1)
        unbatched = _point(run, off, workload, TARGET_CONCURRENCY)
        ceiling = raw.get(workload)
        fastest = best_raw.get(workload)
        entry: dict[str, Any] = {
            "concurrency": at["concurrency"],
            "throughput": at["throughput"],
            "raw_throughput": _get(ceiling, "throughput"),
            "share_of_raw": _ratio(at["throughput"], _get(ceiling, "throughput")),
            "share_of_raw_target": MIN_SHARE_OF_RAW,
            "best_raw_throughput": _get(fastest, "throughput"),
            "best_raw_runtime": None if fastest is None else fastest.get("runtime"),
            "share_of_best_raw": _ratio(at["throughput"], _get(fastest, "throughput")),
            "share_of_best_raw_target": MIN_SHARE_OF_BEST_RAW,
            "batching_off_throughput": _get(unbatched, "throughput"),
            "speedup_vs_batching_off": _ratio(at["throughput"], _get(unbatched, "throughput")),
            "p50_at_1_ms": _get(one, "p50_ms"),
            "raw_single_ms": _get(ceiling, "latency_p50_ms"),
            "latency_ratio_at_1": _ratio(_get(one, "p50_ms"), _get(ceiling, "latency_p50_ms")),
            "latency_ratio_target": MAX_LATENCY_RATIO,
        }
        if isinstance(interleaved.get(workload), dict) and "ratio" in interleaved[workload]:
            turns = interleaved[workload]
            entry["interleaved"] = {
                "vigil_p50_ms": turns["vigil_p50_ms"],
                "raw_p50_ms": turns["raw_p50_ms"],
                "raw_variant": turns["raw_variant"],
                "ratio": turns["ratio"],
                "calls_each": turns["calls_each"],
            }
        if workload in peer:
            best = max(
                (p for p in run["points"] if p["config"] == on and p["workload"] == workload),
                key=lambda p: p["throughput"],
            )
            entry["peer"] = {
                "vigil_peak_throughput": best["throughput"],
                "vigil_peak_concurrency": best["concurrency"],
                "peer_throughput": peer[workload]["throughput"],
                "throughput_ratio": _ratio(best["throughput"], peer[workload]["throughput"]),
                "peer_single_ms": peer[workload]["latency_p50_ms"],
                "latency_ratio_peer_over_vigil": _ratio(
                    peer[workload]["latency_p50_ms"], _get(one, "p50_ms")
                ),
            }
        out[workload] = entry
    if run.get("overload"):
        o = run["overload"]
        out["overload"] = {
            "concurrency": o["concurrency"],
            "max_queue_size": o.get("max_queue_size"),
            "admitted_per_s": o["throughput"],
            "rejected_share": o["rejected_share"],
            "reject_p50_ms": o["reject_p50_ms"],
            "reject_p99_ms": o["reject_p99_ms"],
            "admitted_p50_ms": o["p50_ms"],
            "admitted_p99_ms": o["p99_ms"],
            "codes": o["codes"],
        }
    return out


def _verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "n/a"
    met = value >= target if higher_is_better else value <= target
    return "MET" if met else "NOT MET"


def format_targets(t: dict[str, Any]) -> str:
    lines = []
    for workload in ("template", "verify", "liveness"):
        e = t.get(workload)
        if not e:
            continue
        share, lat = e["share_of_raw"], e["latency_ratio_at_1"]
        of_best = e.get("share_of_best_raw")
        lines.append(
            f"{workload:9} c={e['concurrency']}: {e['throughput']:.1f} req/s = "
            f"x{_ms(share)} the ONNX Runtime fp32 raw {_ms(e['raw_throughput'])} "
            f"[target >= x{MIN_SHARE_OF_RAW}: {_verdict(share, MIN_SHARE_OF_RAW, True)}]; "
            f"{_pct(of_best and of_best * 100)} % of the best raw "
            f"{_ms(e.get('best_raw_throughput'))} ({e.get('best_raw_runtime') or '-'}) "
            f"[target >= {MIN_SHARE_OF_BEST_RAW:.0%}: "
            f"{_verdict(of_best, MIN_SHARE_OF_BEST_RAW, True)}]; vs batching off "
            f"{_ms(e['batching_off_throughput'])} req/s: x{_ms(e['speedup_vs_batching_off'])}"
        )
        turns = e.get("interleaved")
        # With the interleaved measurement, it decides the target; the sweep's c=1 point and the
        # raw single request were measured minutes apart and are shown for reference.
        lines.append(
            f"{'':9} c=1: p50 {_ms(e['p50_at_1_ms'])} ms vs raw single {_ms(e['raw_single_ms'])} "
            f"ms = x{_ms(lat) if lat is None else f'{lat:.2f}'} "
            + (
                "(sweep and raw ceiling, minutes apart)"
                if turns
                else f"[target <= {MAX_LATENCY_RATIO}x: {_verdict(lat, MAX_LATENCY_RATIO, False)}]"
            )
        )
        if turns:
            lines.append(
                f"{'':9} c=1 taking turns: p50 {turns['vigil_p50_ms']:.1f} ms vs raw "
                f"{turns['raw_p50_ms']:.1f} ms ({turns['raw_variant']}) = x{turns['ratio']:.2f}, "
                f"{turns['calls_each']} calls each [target <= {MAX_LATENCY_RATIO}x: "
                f"{_verdict(turns['ratio'], MAX_LATENCY_RATIO, False)}]"
            )
        if "peer" in e:
            p = e["peer"]
            lines.append(
                f"{'':9} vs face_recognition: throughput x{_ms(p['throughput_ratio'])} "
                f"({p['vigil_peak_throughput']:.1f} at c={p['vigil_peak_concurrency']} vs "
                f"{p['peer_throughput']:.2f} req/s), latency: peer p50 {p['peer_single_ms']:.0f} "
                f"ms = x{_ms(p['latency_ratio_peer_over_vigil'])} vigil's"
            )
    o = t.get("overload")
    if o:
        lines.append(
            f"overload  c={o['concurrency']}, queue {o['max_queue_size']}: rejected "
            f"{o['rejected_share']:.0%} (RESOURCE_EXHAUSTED p50 {_ms(o['reject_p50_ms'])} ms, "
            f"p99 {_ms(o['reject_p99_ms'])} ms); admitted {o['admitted_per_s']:.1f} req/s, "
            f"p50 {_ms(o['admitted_p50_ms'])} ms, p99 {_ms(o['admitted_p99_ms'])} ms; "
            f"codes {o['codes']}"
        )
    return "\n".join(lines)


def write_json(path: Path, run: Run) -> None:
    path.write_text(json.dumps(run, indent=2, default=float) + "\n")


def plot(path: Path, run: Run) -> bool:
    """Throughput and p50/p95/p99 against concurrency, per workload and configuration.

    Returns False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    workloads = list(dict.fromkeys(p["workload"] for p in run["points"]))
    configs = list(dict.fromkeys(p["config"] for p in run["points"]))
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
    colours = dict(zip(configs, palette, strict=False))
    raw = {r["workload"]: r for r in run.get("raw") or []}
    peer = {r["workload"]: r for r in run["peer"]} if isinstance(run.get("peer"), list) else {}
    fig, axes = plt.subplots(2, len(workloads), figsize=(5 * len(workloads), 8), squeeze=False)
    for col, workload in enumerate(workloads):
        top, bottom = axes[0][col], axes[1][col]
        for config in configs:
            pts = sorted(
                (p for p in run["points"] if p["config"] == config and p["workload"] == workload),
                key=lambda p: p["concurrency"],
            )
            xs = [p["concurrency"] for p in pts]
            top.plot(xs, [p["throughput"] for p in pts], "o-", color=colours[config], label=config)
            for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
                bottom.plot(
                    xs,
                    [p[key] for p in pts],
                    style,
                    color=colours[config],
                    label=f"{config} {key[:3]}",
                )
        if workload in raw:
            top.axhline(raw[workload]["throughput"], color="black", ls="--", label="raw engine")
            bottom.axhline(
                raw[workload]["latency_p50_ms"], color="black", ls="--", label="raw single p50"
            )
        if workload in peer:
            top.axhline(
                peer[workload]["throughput"], color="tab:red", ls=":", label="face_recognition"
            )
            bottom.axhline(
                peer[workload]["latency_p50_ms"],
                color="tab:red",
                ls=":",
                label="face_recognition p50",
            )
        top.set_title(f"{workload}: throughput")
        top.set_ylabel("requests / s")
        bottom.set_title(f"{workload}: latency")
        bottom.set_ylabel("ms")
        bottom.set_yscale("log")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"vigil benchmark {run['meta']['started']} ({run['meta']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
