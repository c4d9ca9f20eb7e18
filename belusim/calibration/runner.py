"""One probe run: CPU probes on a memory target, GPU probes, the fit, the profile."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from belusim import __version__
from belusim.calibration import profile as prof_mod
from belusim.calibration.cpu import CPUProbeConfig, run_cpu_probes
from belusim.calibration.errors import CalibrationError
from belusim.calibration.fit import fit_all
from belusim.calibration.memory import Target, TargetSpec
from belusim.calibration.models import ModelShape, load_model_shape, nominal_gpu_peaks, shape_from_dict


@dataclass
class ProbeOptions:
    out: Path
    quick: bool = False
    skip_gpu: bool = False
    skip_cpu: bool = False
    threads: int | None = None
    target: TargetSpec = field(default_factory=TargetSpec)
    model: str = "qwen3-32b"
    name: str | None = None
    gpu_peak_tflops: float | None = None
    gpu_hbm_gbps: float | None = None


class Reporter:
    """Progress hooks; the command line shows them with rich, tests ignore them."""

    def step(self, label: str) -> None:  # a sub-probe starts
        pass

    def log(self, message: str) -> None:
        pass


def _peaks(opts: ProbeOptions, device_name: str | None) -> dict | None:
    nominal = nominal_gpu_peaks(device_name or "") if device_name else None
    tflops = opts.gpu_peak_tflops or (nominal[1] if nominal else None)
    gbps = opts.gpu_hbm_gbps or (nominal[2] if nominal else None)
    if not tflops or not gbps:
        return None
    given = opts.gpu_peak_tflops or opts.gpu_hbm_gbps
    return {
        "card": nominal[0] if nominal else None,
        "dense_bf16_tflops": float(tflops),
        "hbm_gbps": float(gbps),
        "source": "command line" if given else nominal[3],
    }


def run_probe(opts: ProbeOptions, reporter: Reporter | None = None) -> dict:
    rep = reporter or Reporter()
    if opts.skip_cpu and opts.skip_gpu:
        raise CalibrationError("nothing to do: both --skip-cpu and --skip-gpu were given")
    if opts.threads is not None and opts.threads < 1:
        raise CalibrationError("--threads must be at least 1")
    model, model_src = load_model_shape(opts.model)
    prof = prof_mod.new_profile(opts.name or Path(opts.out).stem)
    prof["machine"] = prof_mod.machine_info()
    meas = prof["measurements"]
    meas["settings"] = {
        "generator": f"belusim {__version__} calibrate probe",
        "quick": opts.quick,
        "threads": opts.threads,
        "model": opts.model,
        "model_source": model_src,
        "model_card": model.as_dict(),
    }
    errors: dict[str, str] = {}
    notes: list[str] = []
    t_start = time.perf_counter()

    if not opts.skip_cpu:
        from belusim.calibration.native import load as load_native

        rep.step("building the native probe")
        native = load_native()
        meas["settings"]["native_library"] = native.path.name
        cfg = CPUProbeConfig.make(opts.quick, opts.threads)
        with Target(native, opts.target) as target:
            res = run_cpu_probes(native, target, cfg, report=rep.log, step=rep.step)
            prof["target"] = dict(target.info)
        meas["cpu"] = res.measurements
        errors.update(res.errors)
        wc = res.measurements.get("window_check")
        if wc and wc.get("checked") and not wc.get("ok"):
            notes.append(f"the window read-back check FAILED at offset {wc.get('first_bad_offset')}")
    else:
        prof["target"] = {"kind": "none", "description": "CPU probes skipped (--skip-cpu)"}

    peaks = None
    if not opts.skip_gpu:
        from belusim.calibration.gpu import GPUProbeConfig, run_gpu_probes

        rep.step("GPU probes")
        gres = run_gpu_probes(GPUProbeConfig.make(opts.quick), model, report=rep.log, step=rep.step)
        if gres.skipped:
            notes.append(f"GPU probes skipped: {gres.skipped}")
            rep.log(f"GPU probes skipped: {gres.skipped}")
        else:
            prof["machine"]["gpu"] = gres.device
            meas["gpu"] = gres.measurements
            errors.update(gres.errors)
            peaks = _peaks(opts, gres.device.get("name"))
            if peaks:
                meas["gpu"]["nominal_peaks"] = peaks
            else:
                notes.append(f"no nominal peak known for {gres.device.get('name')!r}: pass --gpu-peak-tflops and "
                             "--gpu-hbm-gbps to fit the compute efficiencies")
        from belusim.calibration.allreduce import gpu_count, probe_all_reduce

        if gpu_count() >= 2 and "gpu" in meas:  # tensor-parallel ranks' link: time its all-reduces
            rep.step("all-reduce between GPUs (NCCL)")
            ar = probe_all_reduce(model.hidden, ranks=2, reps=10 if opts.quick else 50)
            meas["gpu"]["all_reduce"] = ar
            if ar.get("error"):
                errors["all_reduce"] = ar["error"]
    else:
        notes.append("GPU probes skipped (--skip-gpu)")

    rep.step("software stages (hashing, chunk memcpy, pinned allocation, lookup call)")
    from belusim.calibration.software import run_software_probes

    meas["software"] = run_software_probes(model.kv_bytes_per_token, opts.quick)

    if errors:
        meas["errors"] = errors
        for k, v in errors.items():
            notes.append(f"{k} did not complete: {v.splitlines()[0] if v else ''}")
    fitted, fit_notes = fit_all(meas, prof["target"].get("kind", "anon") if not opts.skip_cpu else "anon",
                                model, peaks)
    prof["fitted"] = fitted
    notes += fit_notes
    meas["settings"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    prof["notes"] = notes
    return prof


def refit(prof: dict) -> dict:
    """Recompute `fitted` from the profile's own measurements (after a formula change, say)."""
    meas = prof.get("measurements") or {}
    settings = meas.get("settings") or {}
    model: ModelShape | None = None
    if settings.get("model_card"):
        model = shape_from_dict(settings["model_card"], "profile measurements.settings.model_card")
    elif settings.get("model"):
        model, _ = load_model_shape(settings["model"])
    peaks = (meas.get("gpu") or {}).get("nominal_peaks")
    kind = (prof.get("target") or {}).get("kind", "anon")
    fitted, notes = fit_all(meas, kind if kind in ("anon", "file", "dax") else "anon", model, peaks)
    out = dict(prof)
    out["fitted"] = fitted
    out["notes"] = [n for n in prof.get("notes", []) if not n.startswith("refit:")] + [
        f"refit: {prof_mod.now_iso()}"] + [n for n in notes if n not in prof.get("notes", [])]
    return out

