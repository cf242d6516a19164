"""The openvino engine's pipeline in a process of its own, driven from the gateway's engine thread.

OpenVINO GenAI's `ContinuousBatchingPipeline.step()` holds the GIL for the whole step (its Python binding does not
release it), so in the gateway's process the event loop, and with it every other request the gateway serves,
stood still for every step (7-100 ms; docs/local-models.md). Here the pipeline lives in a worker process
(`python -m manifold.providers.local.openvino_worker`), and `RemotePipeline` stands in for it in the gateway with
the pipeline's own interface (`add_request`, `step`, `has_non_finished_requests`, generation handles), so that
batching.Engine drives it unchanged. A step is one round trip over a pipe: the requests added and cancelled since
the last one go with it, each sequence's new tokens and status come back. The engine thread waits for the answer
in `poll`/`recv`, without the GIL.

The worker also keeps a native crash out of the gateway: a worker that dies (a segfault, the OOM killer) or a
step that raises ends the worker, `step()` raises here, and the engine ends that batch's sequences and starts a
new worker (its `rebuild`). The worker dies with the gateway (PR_SET_PDEATHSIG) and when its pipe closes.

What crosses the pipe is plain data: token ids, the generation parameters (`generation_config` turns them into
the pipeline's GenerationConfig in the worker), tokens, log-probabilities and statuses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from types import SimpleNamespace
from typing import Any

READY_TIMEOUT = 600.0  # loading and compiling a large model takes a while
STEP_TIMEOUT = 600.0  # one step, a long prompt's prefill chunk on a slow machine included
_STATUS = {name: SimpleNamespace(name=name) for name in ("RUNNING", "FINISHED", "CANCELLED", "FAILED", "DROPPED")}


class RemoteHandle:
    """A sequence's generation handle, fed by the worker's answers to each step."""

    __slots__ = ("_pipeline", "failure", "logprobs", "sid", "status", "tokens")

    def __init__(self, pipeline: RemotePipeline, sid: int) -> None:
        self._pipeline = pipeline
        self.sid = sid
        self.status = "RUNNING"
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.failure = ""

    def can_read(self) -> bool:
        return bool(self.tokens)

    def read(self) -> dict[int, Any]:
        out = SimpleNamespace(generated_ids=self.tokens, generated_log_probs=self.logprobs)
        self.tokens, self.logprobs = [], []
        return {0: out}

    def get_status(self) -> Any:
        return _STATUS.get(self.status) or SimpleNamespace(name=self.status)

    def cancel(self) -> None:
        if self.status == "RUNNING":
            self.status = "CANCELLED"
            self._pipeline.cancels.append(self.sid)


class RemotePipeline:
    """A ContinuousBatchingPipeline in a worker process (see the module's docstring). `spec`: the model's `path`,
    the `scheduler` settings, the plugin `properties`, and the deployment's `name`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from_parent, to_worker = os.pipe()  # (read end, write end)
        from_worker, to_parent = os.pipe()
        try:
            self._process = subprocess.Popen(
                # the model's name last, for `ps` to tell the workers of several deployments apart
                [sys.executable, "-m", __name__, str(from_parent), str(to_parent), str(spec.get("name", ""))],
                pass_fds=(from_parent, to_parent),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(from_parent)
            os.close(to_parent)
        self._out = Connection(to_worker, readable=False)
        self._in = Connection(from_worker, writable=False)
        self._handles: dict[int, RemoteHandle] = {}
        self._adds: list[tuple[int, list[int], dict[str, Any]]] = []
        self.cancels: list[int] = []
        # The worker ended or stopped answering (not a step that raised in it): no sequence's input is to blame.
        self.lost = False
        try:
            self._out.send(spec)
            answer = self._answer(READY_TIMEOUT)
        except BaseException:
            self.close()
            raise
        if answer[0] != "ready":
            self.close()
            raise RuntimeError(f"The openvino worker could not load the model: {answer[1]}")
        self.info: dict[str, Any] = answer[1]  # the model's eos and stop token ids

    @property
    def pid(self) -> int:
        return self._process.pid

    def add_request(self, request_id: int, prompt: list[int], params: dict[str, Any]) -> RemoteHandle:
        handle = RemoteHandle(self, request_id)
        self._handles[request_id] = handle
        self._adds.append((request_id, list(prompt), params))
        return handle

    def has_non_finished_requests(self) -> bool:
        return bool(self._adds or self.cancels) or any(h.status == "RUNNING" for h in self._handles.values())

    def step(self) -> None:
        adds, self._adds = self._adds, []
        cancels, self.cancels = self.cancels, []
        try:
            self._out.send(("step", adds, cancels))
        except OSError:
            raise RuntimeError(self._ended()) from None
        answer = self._answer(STEP_TIMEOUT)
        if answer[0] == "failed":
            raise RuntimeError(answer[1])
        _, outputs, refused = answer
        for sid, reason in refused:  # add_request refused its config: the engine fails the sequence
            handle = self._handles.pop(sid, None)
            if handle is not None:
                handle.status, handle.failure = "FAILED", reason
        for sid, tokens, logprobs, status in outputs:
            handle = self._handles.get(sid)
            if handle is None:
                continue
            handle.tokens.extend(tokens)
            handle.logprobs.extend(logprobs)
            if handle.status == "RUNNING":
                handle.status = status
            if status != "RUNNING":
                del self._handles[sid]

    def close(self) -> None:
        """End the worker (at once if it does not answer) and its pipes."""
        with contextlib.suppress(OSError):
            self._out.send(("close",))
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for end in (self._out, self._in):
            with contextlib.suppress(OSError):
                end.close()

    def _answer(self, timeout: float) -> Any:
        try:
            if not self._in.poll(timeout):
                self._process.kill()
                self.lost = True
                raise RuntimeError(f"the openvino worker gave no answer in {timeout:.0f} s and was ended")
            return self._in.recv()
        except (EOFError, OSError):
            raise RuntimeError(self._ended()) from None

    def _ended(self) -> str:
        self.lost = True
        try:
            code = self._process.wait(5)
        except subprocess.TimeoutExpired:
            return "the openvino worker stopped answering"
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return f"the openvino worker process ended ({how})"


def generation_config(ov: Any, params: dict[str, Any]) -> Any:
    """The pipeline's GenerationConfig of one sequence's parameters (openvino.py's `_config` makes them)."""
    config = ov.GenerationConfig()
    config.set_eos_token_id(params["eos"])
    config.stop_token_ids = set(params["stop_ids"])
    config.max_new_tokens = params["max_new_tokens"]
    config.do_sample = params["do_sample"]
    for key in ("temperature", "top_p", "top_k", "min_p"):
        if key in params:
            setattr(config, key, params[key])
    config.repetition_penalty = params["repetition_penalty"]
    config.presence_penalty = params["presence_penalty"]
    config.frequency_penalty = params["frequency_penalty"]
    config.rng_seed = params["rng_seed"]
    if params.get("logprobs"):
        config.logprobs = params["logprobs"]
    structured = {key: params[key] for key in ("grammar", "json_schema", "regex") if key in params}
    if structured:
        output = ov.StructuredOutputConfig()
        for key, value in structured.items():
            setattr(output, key, value)
        config.structured_output_config = output
    return config


# -- the worker process ---------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Be killed when the gateway dies, however it dies (Linux; elsewhere the closed pipe ends the worker)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(0)


def serve(inbox: Connection, outbox: Connection) -> int:
    """Load the pipeline `inbox`'s first message describes, then answer steps until the pipe closes."""
    spec = inbox.recv()
    try:
        import numpy as np
        import openvino
        import openvino_genai as ov

        scheduler = ov.SchedulerConfig()
        for key, value in spec["scheduler"].items():
            setattr(scheduler, key, value)
        pipeline = ov.ContinuousBatchingPipeline(spec["path"], scheduler, "CPU", spec["properties"])
        base = pipeline.get_config()
    except Exception as exc:  # noqa: BLE001 - told to the gateway, which refuses the model with it
        outbox.send(("failed", f"{type(exc).__name__}: {exc}"))
        return 1
    outbox.send(("ready", {"eos": int(base.eos_token_id), "stop_ids": [int(t) for t in base.stop_token_ids]}))
    handles: dict[int, Any] = {}
    while True:
        try:
            message = inbox.recv()
        except EOFError:
            return 0
        if message[0] == "close":
            return 0
        _, adds, cancels = message
        for sid in cancels:
            handle = handles.get(sid)
            if handle is not None and handle.get_status().name == "RUNNING":
                handle.cancel()
        refused = []
        for sid, ids, params in adds:
            try:
                prompt = openvino.Tensor(np.array([ids], dtype=np.int64))
                handles[sid] = pipeline.add_request(sid, prompt, generation_config(ov, params))
            except Exception as exc:  # noqa: BLE001 - this request's config is refused, not the worker's others
                refused.append((sid, f"{type(exc).__name__}: {exc}"))
        try:
            if pipeline.has_non_finished_requests():
                pipeline.step()
        except Exception as exc:  # noqa: BLE001 - the pipeline is unusable now: the gateway starts a new worker
            outbox.send(("failed", str(exc)))
            return 3
        outputs = []
        for sid, handle in list(handles.items()):
            tokens: list[int] = []
            logprobs: list[float] = []
            while handle.can_read():
                for out in handle.read().values():
                    tokens.extend(int(t) for t in out.generated_ids)
                    logprobs.extend(float(p) for p in out.generated_log_probs)
            status = handle.get_status().name
            outputs.append((sid, tokens, logprobs, status))
            if status != "RUNNING":
                del handles[sid]
        outbox.send(("stepped", outputs, refused))


def main(argv: list[str]) -> int:
    _die_with_parent()
    inbox = Connection(int(argv[1]), writable=False)
    outbox = Connection(int(argv[2]), readable=False)
    try:
        return serve(inbox, outbox)
    except (EOFError, BrokenPipeError):  # the gateway went away
        return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
