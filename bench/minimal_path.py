"""The minimal full path: the floor of the server's gRPC V2 path, beside the echo floors.

On the server's native front (pygrpc-native, as bench/native_echo.py): one thread takes the
calls in batches (`recv_batch`), parses each V2 `ModelInferRequest`, runs one ONNX Runtime
batch of whatever is waiting (session options as the server's) and answers each call
with its rows as a `ModelInferResponse`. No admission, limits, metrics, deadlines, worker
thread or event loop: what the server costs above this is everything it does beyond the
minimum. Counts its replies on `/bench.EchoStats/Replies` like the echoes.

`python -m bench.minimal_path --port 0 --ready-file F` writes {"grpc_port", "pid"} to F.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pygrpc_native import EVENT_CALL, NativeGrpcFront

from bench.echo_server import REPLIES_PATH, V2_METHOD, V2_SERVICE, write_ready_file
from bench.native_echo import MAX_EVENTS, POLL_MS
from mnist_serving_proto import open_inference_pb2 as pb

METHODS = (f"/{V2_SERVICE}/{V2_METHOD}", REPLIES_PATH)
REPLIES_ID = METHODS.index(REPLIES_PATH)
MODEL = Path(__file__).resolve().parent.parent / "model_repository" / "mnist" / "1" / "model.onnx"


def session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))  # the server's default
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def answer(front: Any, model: ort.InferenceSession, stop: threading.Event) -> None:
    input_name = model.get_inputs()[0].name
    output_names = [output.name for output in model.get_outputs()]
    replies = 0
    while not stop.is_set():
        events = front.recv_batch(MAX_EVENTS, POLL_MS)
        if events is None:
            return
        calls: list[tuple[int, Any, np.ndarray]] = []
        for kind, call_id, method_id, payload, _key in events:
            if kind != EVENT_CALL:
                continue
            if method_id == REPLIES_ID:
                front.respond(call_id, str(replies).encode())
                continue
            request = pb.ModelInferRequest.FromString(payload)
            pixels = np.frombuffer(request.raw_input_contents[0], np.uint8)
            calls.append((call_id, request, pixels.reshape(tuple(request.inputs[0].shape))))
        if not calls:
            continue
        outputs = model.run(output_names, {input_name: np.concatenate([c[2] for c in calls])})
        row = 0
        for call_id, request, pixels in calls:
            reply = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
            for name, value in zip(output_names, outputs, strict=True):
                rows = value[row : row + len(pixels)]
                reply.outputs.add(name=name, datatype="FP32", shape=rows.shape)
                reply.raw_output_contents.append(rows.tobytes())
            row += len(pixels)
            front.respond(call_id, reply.SerializeToString())
            replies += 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.minimal_path", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--ready-file", type=Path, help="write {grpc_port, pid} here when up")
    args = parser.parse_args()
    model = session(args.model)
    front = NativeGrpcFront(f"{args.host}:{args.port}", [(path, False) for path in METHODS])
    front.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker = threading.Thread(target=answer, args=(front, model, stop), name="minimal-path")
    worker.start()
    if args.ready_file is not None:
        write_ready_file(args.ready_file, int(front.bound_port))
    while worker.is_alive():
        worker.join(POLL_MS / 1000)
    front.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
