"""A long-lived engine for live previews of a HyperSPR model's regularisation (``svreg preview``).

The images are read, the model loaded and the affine stage run once
(:func:`~svreg_core.registration.prepare_pair`, :meth:`~svreg_core.registration.PreparedPair.align`);
each request then registers at its codes (α′, λ_max): the network pass and the displacement on the fixed
grid only, no refinement. Its outputs are written by :func:`~svreg_core.outputs.writer.write_outputs`,
the files of ``svreg register`` (``report.json`` included), and are identical to those of
``svreg register FIXED MOVING --model M --alpha-prime A --lambda-max L --outputs ...`` on the same inputs.

Protocol: one JSON object per line on standard input (:data:`REQUEST_FIELDS`), e.g.
``{"alpha_prime": 0.1, "lambda_max": 2.0, "output": "previews/p1", "outputs": ["displacement", "warped"], "id": 1}``;
answers are JSON lines on standard output: ``progress`` events, then ``{"event": "done", "outdir": ...,
"report": {...}}`` or ``{"event": "error", "message": "...", "kind": "InputError"}``, each with the
request's ``id`` when it gave one. A bad request (codes outside the trained ranges, an unknown output, a
folder that cannot be written) is answered with an ``error`` event and the engine serves on.
``{"quit": true}`` or the end of the input ends it. Once ready (after the affine stage) the engine says
``{"event": "ready", ...}``; requests sent before are read then.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svreg_core.errors import InputError, OutputError, SvregError
from svreg_core.image import Image
from svreg_core.models import ModelInfo
from svreg_core.outputs.writer import (
    SELECTABLE_OUTPUTS,
    check_output_space,
    expected_output_bytes,
    prepare_output_dir,
    write_outputs,
)
from svreg_core.progress import ProgressCallback, ProgressEvent, no_progress
from svreg_core.registration import PreparedPair, model_codes

#: The fields of a request line (all optional but ``output``; ``quit`` alone ends the engine).
REQUEST_FIELDS = {
    "alpha_prime": "α′ to predict for (default: the model's own), inside the trained range",
    "lambda_max": "λ_max to predict for (default: the model's own), inside the trained range",
    "output": "the output folder to write (must not exist, or be an svreg output folder with overwrite)",
    "outputs": f"the outputs to write, a list of {', '.join(SELECTABLE_OUTPUTS)} (default: all)",
    "overwrite": "replace an existing svreg output folder (default false)",
    "label_metrics": "score Dice/HD95 (needs --fixed-labels and --moving-labels; slow: default false)",
    "id": "any number or string, repeated in the answer's events",
    "quit": "true: end the engine",
}


#: The folder of svreg's own code: the warnings raised there go into a request's report.
_PACKAGE = Path(__file__).resolve().parent


def check_hyper_model(info: ModelInfo) -> None:
    """:class:`InputError` unless ``info`` describes a hyper model (trained over ranges of codes)."""
    if info.code_ranges is None:
        raise InputError(f"model {info.name or info.architecture} is not a hyper model: its prediction cannot change "
                         "with the codes, so there is nothing to preview; choose a HyperSPR model (see 'svreg "
                         "models').")


def _code(value: Any) -> Any:
    """A request's code as :func:`~svreg_core.registration.model_codes` checks it: an integer too large for a
    float becomes an infinity (refused there as outside the trained range), anything else is unchanged."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return value


def _flag(fields: dict[str, Any], name: str) -> bool:
    """A request's true/false field ``name`` (default false); :class:`InputError` for any other value."""
    value = fields.get(name, False)
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, not {value!r}.")
    return value


@dataclass(frozen=True)
class PreviewRequest:
    """One checked request: register at ``codes`` and write ``outputs`` (``None``: all) into ``output``."""

    codes: tuple[float, float]
    output: Path
    outputs: tuple[str, ...] | None = None
    overwrite: bool = False
    label_metrics: bool = False


class PreviewEngine:
    """Registrations of one aligned pair at any codes of its hyper model, outputs written per request.

    Args:
        pair: the pair, aligned (:meth:`PreparedPair.align`), with a hyper model.
        fixed_labels, moving_labels: label maps on the fixed / moving grids (warped labels with the
            ``labels`` output, Dice/HD95 with ``label_metrics``).
        labels, label_mode: the label values to score and the label interpolation (as ``svreg register``).
        inputs: the input files, which an output folder must not contain.
        sources: the input files by role, recorded in each report.
        extra: additional report entries (e.g. the crop box).
        gzip_level: compression of the ``.nii.gz`` outputs (``write_outputs``; ``None``: the default).
    """

    def __init__(self, pair: PreparedPair, *, fixed_labels: Image | None = None, moving_labels: Image | None = None,
                 labels: Sequence[int] | None = None, label_mode: str = "linear", inputs: Sequence[str | Path] = (),
                 sources: Mapping[str, str | Path] | None = None, extra: dict[str, Any] | None = None,
                 gzip_level: int | None = None) -> None:
        if pair.info is None:
            raise InputError("svreg preview needs a learned model (--model).")
        check_hyper_model(pair.info)
        if pair.affine is None:
            raise RuntimeError("align() the prepared pair before serving previews")
        self.pair, self.fixed_labels, self.moving_labels = pair, fixed_labels, moving_labels
        self.labels, self.label_mode = labels, label_mode
        self.inputs, self.sources, self.extra = list(inputs), dict(sources or {}), dict(extra or {})
        self.gzip_level = gzip_level

    def parse(self, fields: Any) -> PreviewRequest | None:
        """A request from a decoded request line, checked before any work (``None``: quit).

        Raises:
            InputError, OutputError: an unknown field, codes the model cannot use, an unknown output, an
                output folder that cannot be written, label metrics without both label maps, a ``quit``,
                ``overwrite`` or ``label_metrics`` other than true or false.
        """
        if not isinstance(fields, dict):
            raise InputError('a request is one JSON object per line, e.g. {"alpha_prime": 0.1, "lambda_max": 2, '
                             '"output": "previews/p1"}.')
        unknown = sorted(set(fields) - set(REQUEST_FIELDS))
        if unknown:
            raise InputError(f"unknown request field {unknown[0]!r}; use {', '.join(REQUEST_FIELDS)}.")
        if _flag(fields, "quit"):
            return None
        info = self.pair.info
        assert info is not None  # checked by __init__
        codes = model_codes(info, (_code(fields.get("alpha_prime", info.alpha_prime)),
                                   _code(fields.get("lambda_max", info.lambda_max))))
        outputs = fields.get("outputs")
        if outputs is not None:
            if not isinstance(outputs, list) or not all(isinstance(name, str) for name in outputs):
                raise InputError(f"outputs must be a list of names ({', '.join(SELECTABLE_OUTPUTS)}), not {outputs!r}.")
            if not outputs:  # as svreg register's --outputs, which takes at least one name
                raise InputError(f"outputs must name at least one output ({', '.join(SELECTABLE_OUTPUTS)}); leave it "
                                 "out for all of them.")
            unknown = [name for name in outputs if name not in SELECTABLE_OUTPUTS]
            if unknown:
                raise InputError(f"unknown output {unknown[0]!r}; choose from {', '.join(SELECTABLE_OUTPUTS)}.")
            if "labels" in outputs and self.moving_labels is None:
                raise InputError("the output 'labels' needs moving labels (start the engine with --moving-labels).")
            outputs = tuple(outputs)
        flags = {name: _flag(fields, name) for name in ("overwrite", "label_metrics")}
        if flags["label_metrics"] and (self.fixed_labels is None or self.moving_labels is None):
            raise InputError("label_metrics needs both label maps (start the engine with --fixed-labels and "
                             "--moving-labels).")
        output = fields.get("output")
        if not isinstance(output, str) or not output.strip():
            raise InputError("a request needs the output folder to write (\"output\": \"out/preview\").")
        labels = self.moving_labels is not None and (outputs is None or "labels" in outputs)
        try:
            prepare_output_dir(output, overwrite=flags["overwrite"], inputs=self.inputs, create_parent=False,
                               overwrite_switch='"overwrite": true')
            check_output_space(output, expected_output_bytes(self.pair.fixed.shape, self.pair.moving.shape,
                                                             outputs=outputs, labels=labels))
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte or a lone surrogate in it, ...
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise OutputError(f"cannot write the output folder {output!r}: {reason}.") from None
        return PreviewRequest(codes, Path(output), outputs, **flags)

    def run(self, request: PreviewRequest, progress: ProgressCallback = no_progress) -> dict[str, Any]:
        """Register at the request's codes and write its outputs; return the report (also ``report.json``, with
        the registration's warnings under ``warnings`` as ``svreg register`` records them)."""
        t0 = time.perf_counter()

        # the warnings of svreg's own code go into the report, as svreg register records them, for every request
        # (Python would show a warning from the same line once per process); they are still shown on stderr
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self.pair.register_at(request.codes, 0, progress)
        for caught_warning in caught:
            warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename,
                                   caught_warning.lineno, source=caught_warning.source)
        warned = [str(w.message) for w in caught if _PACKAGE in Path(w.filename).resolve().parents]
        # the labels are warped (slow: one-hot voting) only when written or scored
        warp_labels = request.label_metrics or (request.outputs is None or "labels" in request.outputs)
        report = write_outputs(result, request.output,
                               fixed_labels=self.fixed_labels if request.label_metrics else None,
                               moving_labels=self.moving_labels if warp_labels else None, labels=self.labels,
                               label_mode=self.label_mode, overwrite=request.overwrite, inputs=self.inputs,
                               started=t0, outputs=request.outputs, sources=self.sources, gzip_level=self.gzip_level,
                               extra={**self.extra, **({"warnings": warned} if warned else {}),
                                      "preview": {"setup_timing": dict(self.pair.timing)}}, progress=progress)
        progress(ProgressEvent("done", 1, 1, 1.0, "finished"))
        return report

    def serve(self, lines: Iterable[str], emit: Callable[[dict[str, Any]], None], progress: bool = True) -> int:
        """Answer request lines until ``{"quit": true}`` or their end; return how many were answered.

        Each request gets ``progress`` events (unless ``progress`` is false; one of stage ``done``, after the
        outputs) and one ``done`` or ``error`` event, all through ``emit`` and with the request's ``id`` when it
        gave one; a request that fails with an :class:`SvregError` (bad input, unwritable folder) is answered with
        an ``error`` event and the next one is served.
        """
        answered = 0
        for line in lines:
            if not line.strip():
                continue
            tag: dict[str, Any] = {}
            try:
                try:
                    fields = json.loads(line)
                except (ValueError, RecursionError):  # RecursionError: arrays or objects nested too deep
                    raise InputError(f"a request must be one line of JSON, not {line.strip()[:80]!r}.") from None
                if isinstance(fields, dict) and "id" in fields:
                    tag["id"] = fields["id"]
                request = self.parse(fields)
                if request is None:
                    break

                def tagged(event: ProgressEvent, tag: dict[str, Any] = tag) -> None:
                    if progress:  # the event as ProgressPrinter's JSON lines give it, with the request's id
                        emit({"event": "progress", **event.to_dict(), **tag})

                report = self.run(request, tagged)
            except SvregError as exc:
                emit({"event": "error", "message": str(exc), "kind": exc.__class__.__name__, **tag})
            else:
                emit({"event": "done", "outdir": str(request.output.absolute()), "report": report, **tag})
            answered += 1
        return answered
