"""The judge simulators of ``bench/simulator.py`` in a child process, so that a benchmark
measures only its client's CPU time; the parent asks for stats, kills and revives endpoints
over a pipe.

    with SimulatorProcess(SimulatorConfig(slots=64, service_s=0.2)) as sim:
        ...  # sim.urls, sim.kill(0), sim.stats()
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import asdict

from bench.simulator import Simulator, SimulatorConfig, SimulatorStats


def _serve_in_child(configs: list[dict], lifetime_s: float, connection) -> None:
    simulator = Simulator(*(SimulatorConfig(**c) for c in configs), lifetime_s=lifetime_s).start()
    connection.send(simulator.urls)
    deadline = time.monotonic() + lifetime_s
    try:
        while time.monotonic() < deadline:
            if not connection.poll(0.2):
                continue
            command, index = connection.recv()
            if command == "stop":
                break
            if command == "kill":
                simulator.kill(index)
                connection.send(None)
            elif command == "revive":
                simulator.revive(index)
                connection.send(None)
            elif command == "stats":
                connection.send([asdict(s) for s in simulator.stats()])
    except EOFError:  # the parent went away
        pass
    finally:
        simulator.stop()


class SimulatorProcess:
    """The same simulators in a child process (so the client's CPU time is its own)."""

    def __init__(self, *configs: SimulatorConfig, lifetime_s: float = 600.0):
        self.configs = configs or (SimulatorConfig(),)
        self.lifetime_s = lifetime_s
        self.urls: list[str] = []
        self._process = None
        self._connection = None

    def start(self) -> SimulatorProcess:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        configs = [json.loads(json.dumps(asdict(c))) for c in self.configs]
        for config in configs:  # JSON turns the (low, high) range into a list
            if isinstance(config["completion_tokens"], list):
                config["completion_tokens"] = tuple(config["completion_tokens"])
        self._process = context.Process(target=_serve_in_child, args=(configs, self.lifetime_s, child), daemon=True)
        self._process.start()
        deadline = time.monotonic() + 60
        while not self._connection.poll(0.2):
            if not self._process.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the judge simulator process did not start (a script that starts one needs an "
                                   "`if __name__ == '__main__':` guard: the child re-imports it)")
        self.urls = self._connection.recv()
        return self

    def _ask(self, command: str, index: int = 0):
        self._connection.send((command, index))
        return self._connection.recv()

    def kill(self, index: int = 0) -> None:
        self._ask("kill", index)

    def revive(self, index: int = 0) -> None:
        self._ask("revive", index)

    def stats(self) -> list[SimulatorStats]:
        return [SimulatorStats(**s) for s in self._ask("stats")]

    def stop(self) -> None:
        if self._process is None:
            return
        try:
            self._connection.send(("stop", 0))
        except (BrokenPipeError, OSError):
            pass
        self._process.join(15)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._process = None

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
