"""Private Numba kernels of the xyz reader: the atom rows of one frame, bytes to arrays.

Not public API. :mod:`trajwatch.replay.xyz` finds a frame's count and comment lines in
Python and hands the ``n_rows`` atom lines that follow to :func:`parse_rows`, which
tokenises them and writes every column straight into its destination array in one pass.

Numbers are converted correctly rounded, i.e. bit for bit what Python's ``float()``
gives: a token with at most 18 significant digits takes Clinger's exact fast path
(mantissa <= 2**53, power of ten <= 22) or else the Eisel-Lemire algorithm (a 128-bit
approximation of the power of five that is only accepted when it cannot round wrongly;
D. Lemire, "Number parsing at a gigabyte per second", Softw. Pract. Exp. 51, 2021).
Whatever neither can settle (more than 18 digits, subnormal results, overflow, the rare
ambiguous product) is reported back as a "slow" token for the caller to convert with
``float()``, so no token is ever converted approximately.

All integer arithmetic on 64-bit words is written so that no intermediate value
overflows; the kernels therefore give the same answers with ``NUMBA_DISABLE_JIT=1``.

Speed notes (measured, see ``benchmarks/bench_reader.py``): every number, and a one- or
two-letter symbol, is read in place inside :func:`parse_rows`' loop; only what a row
seldom has (nan/inf, more than 18 significant digits, an atomic number for a species)
calls a helper that takes the buffer. Such a call, even inlined at Numba IR level
(``inline="always"``), makes Numba increment and decrement the array's reference count
around it: atomic instructions on every token, which Numba's reference-count pruning
does not remove inside this loop. They were 60 % of the time on a Zen 5 processor (a
1,000-atom row of ``%.8f`` numbers: 286 ns before, 116 after). For the same reason
:func:`eisel_lemire` takes two words of the power-of-five table, not the table. Bytes
are indexed with ``np.uint64`` so that Numba leaves out its negative-index wrap-around
test; tables that live in other modules (element symbols and masses) are passed in as
arguments rather than read as globals, which Numba would freeze into its on-disk cache.
Reading eight digits at a time (SWAR) was tried and gave nothing measurable on these
branch-bound loops, so it is not used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

from trajwatch.elements import MASSES, SYMBOLS

# --- status codes returned by parse_rows --------------------------------------------
OK = 0
NEED_MORE = 1  # the buffer ends inside the block and more data may follow
TRUNCATED = 2  # the data ends (at end of file) before n_rows lines were seen
TOO_FEW_COLUMNS = 3
TOO_MANY_COLUMNS = 4
BAD_NUMBER = 5
BAD_SPECIES = 6
SLOW_OVERFLOW = 7  # more slow tokens than the scratch array holds: retry with a bigger one

# --- column kinds and destinations ---------------------------------------------------
SKIP = 0
SPECIES = 1  # chemical symbol (any case) or atomic number -> numbers
REAL = 2  # float -> one of the float destinations below
ATOMIC_NUMBER = 3  # integer Z column -> numbers

POSITIONS = 0
FORCES = 1
VELOCITIES = 2
SCALAR = 3  # a (n,) float column (masses)

# --- token-level status --------------------------------------------------------------
_T_OK = 0
_T_BAD = 1
_T_SLOW = 2

_MAX_DIGITS = 18  # significant digits that fit an int64 mantissa exactly
_MIN_Q = -342  # range of the power-of-five table
_MAX_Q = 308

_U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)
_M32 = np.uint64(0xFFFFFFFF)
_ONE = np.uint64(1)
_THREE = np.uint64(3)
_NOT_ONE = np.uint64(0xFFFFFFFFFFFFFFFE)
_MASK_LOW9 = np.uint64(0x1FF)  # 64 - (52 + 3) low bits of the high word
_S1 = np.uint64(1)
_S2 = np.uint64(2)
_S4 = np.uint64(4)
_S8 = np.uint64(8)
_S16 = np.uint64(16)
_S32 = np.uint64(32)
_S63 = np.uint64(63)
_B32 = np.uint64(1 << 32)
_B48 = np.uint64(1 << 48)
_B56 = np.uint64(1 << 56)
_B60 = np.uint64(1 << 60)
_B62 = np.uint64(1 << 62)
_B63 = np.uint64(1 << 63)
_TWO52 = np.uint64(1 << 52)
_TWO53 = np.uint64(1 << 53)
_TWO53_INT = 1 << 53

_POW10 = np.array([10.0**k for k in range(23)], dtype=np.float64)  # all exact in binary64
# 2**(e - 1075) for a biased binary64 exponent e in [1, 2046]: scales a 53-bit mantissa
_POW2 = np.array([math.ldexp(1.0, e - 1075) for e in range(2047)], dtype=np.float64)


def _power_of_five_table() -> NDArray[np.uint64]:
    """128-bit normalised approximations of 5**q, q in [-342, 308], as (high, low) words.

    Non-negative q: 5**q truncated to its top 128 bits. Negative q: 2**b // 5**-q + 1
    (rounded up) for a b that leaves 128 significant bits (then truncated). This is the
    table the Eisel-Lemire algorithm's error analysis assumes.
    """
    table = np.empty((_MAX_Q - _MIN_Q + 1, 2), dtype=np.uint64)
    for q in range(_MIN_Q, _MAX_Q + 1):
        if q < 0:
            power = 5**-q
            z = power.bit_length()
            b = z + 127 if q >= -27 else 2 * z + 128
            value = 2**b // power + 1
        else:
            value = 5**q
        shift = value.bit_length() - 128  # keep the top 128 bits (truncating)
        value = value >> shift if shift > 0 else value << -shift
        table[q - _MIN_Q, 0] = value >> 64
        table[q - _MIN_Q, 1] = value & 0xFFFFFFFFFFFFFFFF
    return table


POW5_TABLE = _power_of_five_table()


def _symbol_table() -> NDArray[np.int32]:
    """Atomic number by (first letter, second letter or 26 for none), case-insensitive."""
    table = np.full((26, 27), -1, dtype=np.int32)
    for z, symbol in enumerate(SYMBOLS):
        first = ord(symbol[0].lower()) - 97
        second = ord(symbol[1].lower()) - 97 if len(symbol) > 1 else 26
        table[first, second] = z
    return table


SYMBOL_TABLE = _symbol_table()


@njit(cache=True, inline="always")
def _mul128(a: Any, b: Any) -> tuple[Any, Any]:
    """Full 64x64 -> 128-bit product (high, low) of two uint64, without overflow."""
    a0 = a & _M32
    a1 = a >> _S32
    b0 = b & _M32
    b1 = b >> _S32
    p00 = a0 * b0
    p01 = a0 * b1
    p10 = a1 * b0
    p11 = a1 * b1
    mid = (p00 >> _S32) + (p01 & _M32) + (p10 & _M32)
    high = p11 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32)
    low = ((mid & _M32) << _S32) | (p00 & _M32)
    return high, low


@njit(cache=True, inline="always")
def _clz(x: Any) -> int:
    """Leading zero bits of a non-zero uint64 (branch-free binary search)."""
    t = 32 * int(x < _B32)
    x = x << np.uint64(t)
    n = t
    t = 16 * int(x < _B48)
    x = x << np.uint64(t)
    n += t
    t = 8 * int(x < _B56)
    x = x << np.uint64(t)
    n += t
    t = 4 * int(x < _B60)
    x = x << np.uint64(t)
    n += t
    t = 2 * int(x < _B62)
    x = x << np.uint64(t)
    n += t
    return n + int(x < _B63)


@njit(cache=True, inline="always")
def eisel_lemire(mantissa: int, q: int, high5: Any, low5: Any) -> tuple[bool, float]:
    """``mantissa * 10**q`` correctly rounded, for 0 < mantissa < 2**63, ``_MIN_Q <= q <=
    _MAX_Q`` and normal results; ``high5, low5`` is row ``q - _MIN_Q`` of ``POW5_TABLE``
    (words, not the table: see "Speed notes").

    Returns ``(False, 0.0)`` when the 128-bit product cannot decide the rounding, or the
    result would be subnormal, zero or infinite; the caller then falls back to ``float()``.
    """
    w = np.uint64(mantissa)
    lz = _clz(w)
    w = w << np.uint64(lz)
    high, low = _mul128(w, high5)
    if (high & _MASK_LOW9) == _MASK_LOW9:
        # the truncated product might carry into the bits we keep: refine with the low word
        high2, _low2 = _mul128(w, low5)
        if high2 > _U64_MAX - low:
            low = high2 - (_U64_MAX - low) - _ONE
            high = high + _ONE
        else:
            low = low + high2
    if low == _U64_MAX and (q < -27 or q > 55):
        return False, 0.0
    upperbit = int(high >> _S63)
    shift = upperbit + 9
    m = high >> np.uint64(shift)
    power2 = ((q * 217706) >> 16) + 63 + upperbit - lz + 1023
    if power2 <= 0:
        return False, 0.0  # subnormal
    if (
        low <= _ONE
        and q >= -4
        and q <= 23
        and (m & _THREE) == _ONE
        and (m << np.uint64(shift)) == high
    ):
        m = m & _NOT_ONE  # exactly half-way: round to even, i.e. down
    m = m + (m & _ONE)
    m = m >> _S1
    if m >= _TWO53:
        m = _TWO52
        power2 += 1
    if power2 >= 2047:
        return False, 0.0  # overflow
    return True, float(m) * _POW2[power2]  # exact: m < 2**53 and the result is normal


@njit(cache=True, inline="always")
def _lower(c: int) -> int:
    return c | 32


@njit(cache=True)
def _parse_special(buf: NDArray[np.uint8], i: int, end: int) -> tuple[int, float, int]:
    """nan / inf / infinity with optional sign, any case (what ``float()`` accepts)."""
    j = i
    negative = False
    if j < end and (buf[np.uint64(j)] == 45 or buf[np.uint64(j)] == 43):
        negative = buf[np.uint64(j)] == 45
        j += 1
    n = end - j
    if n == 3:
        a = _lower(int(buf[np.uint64(j)]))
        b = _lower(int(buf[np.uint64(j + 1)]))
        c = _lower(int(buf[np.uint64(j + 2)]))
        if a == 110 and b == 97 and c == 110:  # nan
            return _T_OK, math.nan, end
        if a == 105 and b == 110 and c == 102:  # inf
            return _T_OK, -math.inf if negative else math.inf, end
    if n == 8:
        word = (105, 110, 102, 105, 110, 105, 116, 121)  # infinity
        for k in range(8):
            if _lower(int(buf[np.uint64(j + k)])) != word[k]:
                return _T_BAD, 0.0, i
        return _T_OK, -math.inf if negative else math.inf, end
    return _T_BAD, 0.0, i


@njit(cache=True)
def _significant(buf: NDArray[np.uint8], start: int, end: int) -> bool:
    """Whether the digits (and one '.') in ``buf[start:end]`` have more than
    ``_MAX_DIGITS`` significant ones, leading zeros not counted."""
    n_digits = 0
    leading = True
    for k in range(start, end):
        c = int(buf[np.uint64(k)])
        if c == 46:
            continue
        if leading and c == 48:
            continue
        leading = False
        n_digits += 1
    return n_digits > _MAX_DIGITS


@njit(cache=True, inline="always")
def _parse_atomic_number(buf: NDArray[np.uint8], i: int, end: int) -> tuple[int, int]:
    j = i
    if buf[np.uint64(j)] == 43:  # '+'
        j += 1
    z = 0
    n = 0
    while j < end:
        d = int(buf[np.uint64(j)]) - 48
        if d < 0 or d > 9:
            break
        if z < 1000:
            z = z * 10 + d
        n += 1
        j += 1
    if n == 0 or (j < end and buf[np.uint64(j)] > 32) or z > 118:
        return -1, i
    return z, j


@njit(cache=True)
def parse_rows(
    buf: NDArray[np.uint8],
    start: int,
    end: int,
    at_eof: bool,
    n_rows: int,
    kinds: NDArray[np.int64],
    groups: NDArray[np.int64],
    components: NDArray[np.int64],
    exact_columns: bool,
    symbols: NDArray[np.int32],
    table: NDArray[np.uint64],
    positions: NDArray[np.float64],
    forces: NDArray[np.float64],
    velocities: NDArray[np.float64],
    scalar: NDArray[np.float64],
    numbers: NDArray[np.int32],
    slow: NDArray[np.int64],
) -> tuple[int, int, int, int, int]:
    """Parse ``n_rows`` atom lines of ``buf[start:end]`` into the output arrays.

    Column ``k`` of a row is ``kinds[k]``; a REAL column goes to destination
    ``groups[k]`` (POSITIONS, FORCES, VELOCITIES, SCALAR), component ``components[k]``.
    With ``exact_columns`` a row must have exactly ``len(kinds)`` tokens, otherwise at
    least that many (the rest are ignored). Slow tokens are listed in ``slow`` as rows
    ``(row, group, component, token_start, token_end)`` and their values left as NaN.

    Returns ``(status, offset, row, column, n_slow)``: for OK, ``offset`` is where the
    next line starts; on an error, ``row``/``column`` locate it and ``offset`` is the
    offending token (or line) start; for NEED_MORE, ``row`` is the number of complete
    rows that were available.
    """
    n_columns = kinds.shape[0]
    n_slow = 0
    i = start
    for r in range(n_rows):
        # One pass per row: tokens run up to whitespace, a newline or the end of the
        # data. A row is only accepted once its newline (or the end of the file) is seen;
        # an error in a row the buffer cuts short is reported as NEED_MORE instead.
        if i >= end:
            return (NEED_MORE if not at_eof else TRUNCATED), i, r, 0, n_slow
        column = 0
        j = i
        status = OK
        while True:
            while j < end:
                c = buf[np.uint64(j)]
                if c > 32 or c == 10:
                    break
                j += 1
            if j >= end or buf[np.uint64(j)] == 10:
                break
            if column >= n_columns:
                if exact_columns:
                    status = TOO_MANY_COLUMNS
                    break
                while j < end and buf[np.uint64(j)] > 32:
                    j += 1
                column += 1
                continue
            kind = kinds[column]
            if kind == REAL:
                # The token is read here in place, not by a helper: see "Speed notes".
                t = j
                c = int(buf[np.uint64(t)])
                negative = c == 45
                if negative or c == 43:
                    t += 1
                # every digit goes into w, exact while the token has <= 18 digits or
                # <= 18 significant ones (leading zeros keep w at 0)
                w = 0
                first_digit = t
                while t < end:
                    d = int(buf[np.uint64(t)]) - 48
                    if d < 0 or d > 9:
                        break
                    w = w * 10 + d
                    t += 1
                n_digits = t - first_digit
                n_fraction = 0
                if t < end and buf[np.uint64(t)] == 46:  # '.'
                    t += 1
                    first_fraction = t
                    while t < end:
                        d = int(buf[np.uint64(t)]) - 48
                        if d < 0 or d > 9:
                            break
                        w = w * 10 + d
                        t += 1
                    n_fraction = t - first_fraction
                    n_digits += n_fraction
                digits_end = t
                exponent = 0
                n_exp_digits = -1  # no exponent
                if n_digits > 0 and t < end and (buf[np.uint64(t)] | 32) == 101:  # e E
                    t += 1
                    exp_negative = False
                    if t < end and (buf[np.uint64(t)] == 45 or buf[np.uint64(t)] == 43):
                        exp_negative = buf[np.uint64(t)] == 45
                        t += 1
                    n_exp_digits = 0
                    while t < end:
                        d = int(buf[np.uint64(t)]) - 48
                        if d < 0 or d > 9:
                            break
                        if exponent < 100000:
                            exponent = exponent * 10 + d
                        n_exp_digits += 1
                        t += 1
                    if exp_negative:
                        exponent = -exponent
                token_status = _T_OK
                token_end = t
                value = 0.0
                q = exponent - n_fraction
                if n_digits == 0:  # nan, inf, infinity (any case, signed), or no number
                    while t < end and buf[np.uint64(t)] > 32:
                        t += 1
                    token_status, value, token_end = _parse_special(buf, j, t)
                elif n_exp_digits == 0 or (t < end and buf[np.uint64(t)] > 32):
                    token_status = _T_BAD
                elif n_digits > _MAX_DIGITS and _significant(buf, first_digit, digits_end):
                    token_status = _T_SLOW  # more than 18 significant digits: float()
                elif w == 0:
                    value = -0.0 if negative else 0.0
                elif w <= _TWO53_INT and -22 <= q <= 22:  # Clinger: both factors exact
                    value = float(w) * _POW10[q] if q >= 0 else float(w) / _POW10[-q]
                    if negative:
                        value = -value
                elif _MIN_Q <= q <= _MAX_Q:
                    ok, value = eisel_lemire(w, q, table[q - _MIN_Q, 0], table[q - _MIN_Q, 1])
                    if not ok:
                        token_status = _T_SLOW
                    elif negative:
                        value = -value
                else:
                    token_status = _T_SLOW
                if token_status == _T_BAD:
                    status = BAD_NUMBER
                    break
                group = groups[column]
                component = components[column]
                if token_status == _T_SLOW:
                    if n_slow >= slow.shape[0]:
                        status = SLOW_OVERFLOW
                        break
                    slow[n_slow, 0] = r
                    slow[n_slow, 1] = group
                    slow[n_slow, 2] = component
                    slow[n_slow, 3] = j
                    slow[n_slow, 4] = token_end
                    n_slow += 1
                    value = math.nan
                if group == POSITIONS:
                    positions[r, component] = value
                elif group == FORCES:
                    forces[r, component] = value
                elif group == VELOCITIES:
                    velocities[r, component] = value
                else:
                    scalar[r] = value
                j = token_end
            elif kind == SPECIES:
                # a one- or two-letter symbol (any case) in place, as numbers above
                c = int(buf[np.uint64(j)])
                first = (c | 32) - 97
                letters = 0 <= first < 26
                second = 26  # (none: a one-letter symbol)
                t = j + 1
                if t < end and buf[np.uint64(t)] > 32:
                    second = (int(buf[np.uint64(t)]) | 32) - 97
                    letters = letters and 0 <= second < 26
                    t += 1
                if letters and (t >= end or buf[np.uint64(t)] <= 32):
                    z = int(symbols[first, second])
                    token_end = t
                elif 48 <= c <= 57:  # an atomic number
                    z, token_end = _parse_atomic_number(buf, j, end)
                else:
                    z, token_end = -1, j
                if z < 0:
                    status = BAD_SPECIES
                    break
                numbers[r] = z
                j = token_end
            elif kind == ATOMIC_NUMBER:
                z, token_end = _parse_atomic_number(buf, j, end)
                if z < 0:
                    status = BAD_SPECIES
                    break
                numbers[r] = z
                j = token_end
            else:
                while j < end and buf[np.uint64(j)] > 32:
                    j += 1
            column += 1
        if status == OK and column < n_columns:
            status = TOO_FEW_COLUMNS
            j = i
        # is the row complete? (its newline is at or after j)
        k = j
        while k < end and buf[np.uint64(k)] != 10:
            k += 1
        if k >= end and not at_eof:
            return NEED_MORE, i, r, 0, n_slow
        if status != OK:
            return status, j, r, column, n_slow
        i = k + 1
    return OK, min(i, end), n_rows, 0, n_slow


#: standard masses by atomic number (passed to the kernel, not frozen into its cache)
STANDARD_MASSES = np.array(MASSES, dtype=np.float64)


@njit(cache=True)
def to_velocities(
    values: NDArray[np.float64],
    numbers: NDArray[np.int32],
    masses: NDArray[np.float64],
    standard_masses: NDArray[np.float64],
    momenta: bool,
    time_unit: float,
) -> None:
    """In place, ASE momenta (amu·Å/ASE-time) or ASE velocities (Å/ASE-time) to Å/fs.

    Momenta are divided by the mass (``masses`` if given, else the standard mass of the
    element) and then by the ASE time unit ``time_unit`` (fs), the same operations in the
    same order as ``atoms.get_velocities() / ASE_TIME_IN_FS``, so the results agree with
    ASE bit for bit. A zero mass gives NaN velocities (a frame the features flag as
    non-finite), not a division error.
    """
    use_masses = masses.shape[0] > 0
    for r in range(values.shape[0]):
        if momenta:
            m = masses[r] if use_masses else standard_masses[numbers[r]]
            for c in range(3):  # a zero mass (a file's, or a dummy atom X's): no velocity
                values[r, c] = values[r, c] / m / time_unit if m != 0.0 else np.nan
        else:
            for c in range(3):
                values[r, c] = values[r, c] / time_unit
