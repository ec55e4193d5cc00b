"""Stand-ins for the torch.cuda calls normbench's GPU path makes, so that the CPU tests can check what
they are called with: which device is made current, which stream a capture runs on, what is restored
after a capture fails.  The model follows CUDA's: each device has a current stream (its default stream
unless a ``torch.cuda.stream`` context says otherwise), and capture begins on the current stream of the
current device, routing that stream's allocations to the graph's pool until capture ends."""

from __future__ import annotations

import contextlib

import torch

FOLLOW_ON = "CUDA error: operation failed due to a previous error during capture"


class FakeStream:
    def __init__(self, cuda, device=None):
        self.device = torch.device(device if device is not None else cuda.current_key)
        self.default = False

    def wait_stream(self, other):
        pass

    def __repr__(self):
        return f"<{'default ' if self.default else ''}stream of {self.device}>"


class FakeCuda:
    def __init__(self, monkeypatch, count: int = 2):
        self.count, self.current_key = count, "cuda:0"  # the current device (a CPU trainer's tests: "cpu")
        self.current: dict[str, FakeStream] = {}
        self.set_devices, self.captures, self.streams = [], [], []
        self.allocating_to_pool = None  # the stream whose allocations go to a graph's pool (capture mode)
        cuda = self

        class Graph:
            def capture_begin(self):
                stream = cuda.current_stream()
                assert not stream.default, "capture on a default stream is refused by CUDA"
                cuda.allocating_to_pool = stream
                self.failed = False
                cuda.captures.append({"stream": stream, "device": torch.device(cuda.current_key)})

            def capture_end(self):
                assert cuda.current_stream() is cuda.allocating_to_pool, "capture must end on the stream it began on"
                cuda.allocating_to_pool = None
                if cuda.invalidated:  # what CUDA says after an error inside the capture
                    cuda.invalidated = False
                    raise RuntimeError(FOLLOW_ON)

            def replay(self):
                pass

        self.invalidated = False
        for name, value in {
            "is_available": lambda: True, "device_count": lambda: self.count, "set_device": self.set_device,
            "current_device": lambda: torch.device(self.current_key).index, "Stream": self.stream_of,
            "current_stream": self.current_stream, "stream": self.stream_context, "device": self.device_context,
            "synchronize": lambda device=None: None, "CUDAGraph": Graph,
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def _key(self, device) -> str:
        if device is None or device == "cuda" or device == torch.device("cuda"):
            return self.current_key
        return str(torch.device(device))

    def set_device(self, device):
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        self.set_devices.append(device)
        self.current_key = str(device)

    def stream_of(self, device=None):
        s = FakeStream(self, device)
        self.streams.append(s)
        return s

    def current_stream(self, device=None):
        key = self._key(device)
        if key not in self.current:
            self.current[key] = FakeStream(self, key)
            self.current[key].default = True
        return self.current[key]

    @contextlib.contextmanager
    def stream_context(self, stream):
        key = self._key(stream.device)
        before = self.current_stream(stream.device)
        self.current[key] = stream
        try:
            yield
        finally:
            self.current[key] = before

    @contextlib.contextmanager
    def device_context(self, device):
        before, self.current_key = self.current_key, self._key(device)
        try:
            yield
        finally:
            self.current_key = before

    def fail_inside_capture(self, message: str):
        """An error raised inside the captured body, as CUDA raises it: the capture is invalidated, and
        capture_end then fails with the follow-on error."""
        self.invalidated = True
        raise RuntimeError(message)
