"""OpenMM: a reporter that sends a Frame every ``interval`` steps, in Å, Å/fs, eV/Å, eV, fs.

Append it to ``simulation.reporters``; it asks OpenMM only for what it sends. Positions
and velocities are cheap to get; **forces and energy are not**: asking for them makes
OpenMM evaluate the forces once more for that step, so they are off by default (turn
them on, or use a larger ``interval``, when the extra cost is fine). Positions are sent
as OpenMM integrates them, not wrapped into the box (``wrap=False``): wrapping costs
``getState`` more than the copy itself (see ``docs/engines.md``).

>>> import openmm as mm, numpy as np
>>> from openmm import app, unit
>>> system = mm.System()
>>> for _ in range(2):
...     _ = system.addParticle(39.948)
>>> simulation = app.Simulation(app.Topology(), system, mm.VerletIntegrator(0.002),
...                             mm.Platform.getPlatformByName("Reference"))
>>> simulation.context.setPositions(np.array([[0.0, 0, 0], [0.4, 0, 0]]))
>>> received = []
>>> class Keep:
...     def send(self, frame):
...         received.append(frame)
...         return True
>>> simulation.reporters.append(OpenMMReporter(Keep(), 2, numbers=[18, 18]))
>>> simulation.step(4)
>>> [(f.step, f.time) for f in received], received[0].positions[1].tolist()
([(2, 4.0), (4, 8.0)], [4.0, 0.0, 0.0])

On alarm (the target is a :class:`~trajwatch.adapters.inprocess.Watch`), ``report``
raises :class:`~trajwatch.adapters.inprocess.AlarmStop` out of ``simulation.step(n)``:
the step is complete and the context consistent. With ``raise_on_alarm=False``, step in
chunks and check ``watch.stop_requested`` between them (see ``docs/engines.md``).

``background=True`` hands each report's ``State`` to a thread that builds and sends the
frame while OpenMM computes the next steps (OpenMM releases the GIL while it steps):
the engine's thread then pays ~1 µs per report instead of the whole send. Call
:meth:`OpenMMReporter.close` after the last step to send what is still queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from trajwatch.adapters.background import BackgroundSender
from trajwatch.adapters.inprocess import FrameTarget, stop_event
from trajwatch.adapters.units import IMD_PROFILES
from trajwatch.frame import Frame

__all__ = ["OpenMMReporter", "numbers_from_topology"]

_NM = 10.0  # nm -> Å
_NM_PER_PS = 0.01  # nm/ps -> Å/fs
_PS = 1000.0  # ps -> fs
_KJ_PER_MOL = IMD_PROFILES["gromacs"].energy  # kJ/mol -> eV
_KJ_PER_MOL_NM = _KJ_PER_MOL / _NM  # kJ/(mol·nm) -> eV/Å


def numbers_from_topology(topology: Any) -> NDArray[np.int32]:
    """Atomic numbers of an OpenMM ``Topology`` (0 for particles without an element)."""
    return np.array(
        [0 if a.element is None else a.element.atomic_number for a in topology.atoms()],
        dtype=np.int32,
    )


class OpenMMReporter:
    """Send the simulation's state every ``interval`` steps to ``target``.

    ``target`` is a :class:`~trajwatch.streaming.Publisher` or a
    :class:`~trajwatch.adapters.inprocess.Watch`. ``numbers`` defaults to the elements of
    ``simulation.topology`` (give them when the topology has none, e.g. a bare System).
    ``velocities`` (cheap) default on; ``forces`` and ``energy`` (an extra force
    evaluation per report) default off. ``wrap``: False sends positions unwrapped (the
    cheapest ``getState``), True wraps each molecule into the box, None does what the
    other reporters of the step want, so they share one ``getState``.

    ``background=True``: a thread builds and sends the frames (see the module's text);
    at most ``pending_bytes`` of states wait for it. When that many do, a report is
    dropped (``dropped``) if the target may drop (a default Publisher), else the engine
    waits; an alarm stops ``step`` at the first report after it (a few steps late).
    """

    def __init__(
        self,
        target: FrameTarget,
        interval: int = 1,
        *,
        numbers: ArrayLike | None = None,
        velocities: bool = True,
        forces: bool = False,
        energy: bool = False,
        source: str = "openmm",
        raise_on_alarm: bool = True,
        wrap: bool | None = False,
        background: bool = False,
        pending_bytes: int = 64 << 20,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, not {interval}")
        self.target = target
        self.interval = int(interval)
        self.source = source
        self.raise_on_alarm = raise_on_alarm
        self.sent = 0
        self._velocities = velocities
        self._forces = forces
        self._energy = energy
        include = ["positions"]
        if velocities:
            include.append("velocities")
        if forces:
            include.append("forces")
        if energy:
            include.append("energy")
        self._include = include
        self._wrap = wrap
        self._numbers: NDArray[np.int32] | None = (
            None if numbers is None else np.array(numbers, dtype=np.int32)
        )
        self._n = 0
        self._periodic = False
        self._pbc = np.zeros(3, dtype=bool)
        self._kinds: Sequence[Any] = ()
        self._fast = True
        self._box: Any = None
        self._cell: NDArray[np.float64] | None = None
        self.background = background
        self._pending_bytes = pending_bytes
        self._sender: BackgroundSender | None = None
        self._dropped = 0  # by the background threads already closed

    def describeNextReport(self, simulation: Any) -> dict[str, Any]:  # noqa: N802 - OpenMM API
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": self._wrap, "include": self._include}

    def report(self, simulation: Any, state: Any) -> None:
        if not self._n:
            self._setup(simulation)
        sender = self._sender
        if sender is None:
            self.target.send(self._frame(state))
        else:
            sender.put(state)  # a State is OpenMM's own copy: the thread reads it later
        if self.raise_on_alarm:
            stop = stop_event(self.target)
            if stop is not None:
                raise stop

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every report so far is sent (background mode); False on timeout."""
        return True if self._sender is None else self._sender.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Send what is queued and stop the background thread (a no-op otherwise)."""
        sender, self._sender = self._sender, None
        if sender is None:
            return True
        done = sender.close(timeout)
        self._dropped += sender.dropped
        self._n = 0  # (after the thread is done with it) a later report starts a new thread
        return done

    @property
    def dropped(self) -> int:
        """Reports not sent because the background thread was ``pending_bytes`` behind."""
        return self._dropped + (0 if self._sender is None else self._sender.dropped)

    def _frame(self, state: Any) -> Frame:
        """The Frame of one report's ``State`` (on the background thread, if there is one)."""
        n = self._n
        positions = self._vector(state, 0, n, _NM)
        velocities = self._vector(state, 1, n, _NM_PER_PS) if self._velocities else None
        forces = self._vector(state, 2, n, _KJ_PER_MOL_NM) if self._forces else None
        energy = None
        if self._energy:
            energy = state.getPotentialEnergy()._value * _KJ_PER_MOL
        cell = None
        if self._periodic:
            box = state.getPeriodicBoxVectors()._value
            if box != self._box:  # a barostat changed it (or the first report)
                a, b, c = box
                cell = np.array([[a[0], a[1], a[2]], [b[0], b[1], b[2]], [c[0], c[1], c[2]]])
                cell *= _NM
                cell.setflags(write=False)  # shared by the frames of an unchanged box
                self._box, self._cell = box, cell
            cell = self._cell
        assert self._numbers is not None
        # fresh arrays in exactly the Frame's layout: the trusted constructor, no re-checks
        frame = Frame._from_owned(
            positions,
            self._numbers,  # shared by every frame, read-only
            velocities,
            forces,
            energy,
            cell,
            self._pbc,  # shared, read-only
            state.getStepCount(),
            state.getTime()._value * _PS,
            self.sent,
            self.source,
        )
        self.sent += 1
        return frame

    def _setup(self, simulation: Any) -> None:
        import openmm

        system = simulation.system
        n = system.getNumParticles()
        if self._numbers is None:
            numbers = numbers_from_topology(simulation.topology)
            if numbers.shape != (n,):
                raise ValueError(
                    f"the topology has {numbers.size} atoms, the system {n} particles: "
                    "pass numbers=[...] to OpenMMReporter"
                )
            self._numbers = numbers
        elif self._numbers.shape != (n,):
            raise ValueError(f"numbers has {self._numbers.size} entries, the system {n}")
        self._numbers.setflags(write=False)
        self._periodic = bool(system.usesPeriodicBoundaryConditions())
        self._pbc = np.array([self._periodic] * 3)
        self._pbc.setflags(write=False)
        state_kind = openmm.State
        self._kinds = (state_kind.Positions, state_kind.Velocities, state_kind.Forces)
        self._fast = hasattr(state_kind, "_getVectorAsNumpy")
        self._n = n
        if self.background:
            per_state = n * 24 * (1 + self._velocities + self._forces)  # bytes, float64
            self._sender = BackgroundSender(
                self.target, self._frame, max_pending=max(4, self._pending_bytes // per_state),
                name=f"trajwatch-openmm-{self.source}",
            )  # fmt: skip

    def _vector(self, state: Any, kind: int, n: int, scale: float) -> NDArray[np.float64]:
        """One per-particle array, converted in place with a single multiply."""
        if self._fast:
            # straight into a fresh array: no Quantity, no unit bookkeeping
            out = np.empty((n, 3), dtype=np.float64)
            state._getVectorAsNumpy(self._kinds[kind], out)
        else:  # pragma: no cover - OpenMM builds without the private fast path
            getter = (state.getPositions, state.getVelocities, state.getForces)[kind]
            out = np.array(getter(asNumpy=True)._value, dtype=np.float64)
        out *= scale
        return out
