"""(ε, δ) of the clipped, noised uploads (privacy/defences.py), from Opacus's Rényi-DP accountant (Mironov 2017).

What is counted: one *release* is one upload of one sample's smashed data, clipped to L2 norm ≤ C, plus
N(0, (σC)² I). Replacing that sample's input moves the clipped vector by at most 2C, so each release is a Gaussian
mechanism whose noise is σ/2 times its sensitivity. Every training round uploads each sample of a participating client
once (one local pass), so a run of R rounds makes at most R releases of each sample; the accountant composes them with
sampling rate 1 (no amplification by subsampling: every sample is uploaded every round). The figure covers the uploads
only: labels, the returned gradients and model weights are not part of it (docs/privacy.md).
"""

import math
import warnings

from locfedmix.errors import UserError

DELTA = 1e-5  # below 1/n for every client share of the benchmarks (1,000 samples)

# RDP orders from just above 1 (where large ε are tightest) to 10,000 (where small ε are): Opacus's default list
# starts at 1.1 and ends at 63, which loosens both ends.
_ORDERS = [1 + 10 ** (k / 25 - 4) for k in range(100)] + [2 * 10 ** (k / 25) for k in range(93)]


def release_epsilon(noise_multiplier: float, releases: int = 1, delta: float = DELTA) -> float:
    """ε after `releases` uploads of one sample at noise multiplier σ (noise std σC, clip C); inf without noise."""
    if noise_multiplier < 0 or releases < 0 or not 0 < delta < 1:
        raise ValueError(f"noise_multiplier={noise_multiplier}, releases={releases}, delta={delta}: need σ ≥ 0, "
                         f"releases ≥ 0 and 0 < δ < 1")
    if releases == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    try:
        from opacus.accountants import RDPAccountant
    except ImportError as missing:
        raise UserError("privacy accounting needs Opacus: pip install 'locfedmix[privacy]'") from missing
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier / 2, 1.0, releases)]  # (noise / sensitivity, sampling rate, steps)
    with warnings.catch_warnings():  # Opacus warns when the best order is an end of the list; ours reach far enough
        warnings.simplefilter("ignore")
        epsilon, _ = accountant.get_privacy_spent(delta=delta, alphas=_ORDERS)
    return float(epsilon)
