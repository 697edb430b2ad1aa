"""Physical constants in trajwatch's units (Å, fs, eV, amu, K).

>>> round(KB_EV_PER_K * 300, 5)  # kT at 300 K in eV
0.02585
"""

from __future__ import annotations

#: Boltzmann constant, eV/K (CODATA 2014, as ASE uses).
KB_EV_PER_K = 8.617330337217213e-05
#: Kinetic energy of 1 amu moving at 1 Å/fs, in eV.
AMU_A2_PER_FS2_IN_EV = 103.6426957
#: One ASE time unit (Å·sqrt(amu/eV)) in fs.
ASE_TIME_IN_FS = 10.180505671156723
