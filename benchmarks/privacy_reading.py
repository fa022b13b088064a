"""The Reading section of benchmarks/results/PRIVACY.md: sentences read off the privacy cells' records (means over
seeds, with per-seed values), so that every claim in the report is computed from the numbers it cites."""

from typing import Any

import numpy as np


def value(r: dict[str, Any], metric: str, digits: int) -> str:
    """mean ± standard deviation over seeds ('–' where not measured)."""
    if np.isnan(r[metric]):
        return "–"
    spread = f" ± {r[metric + '_sd']:.{digits}f}" if r["seeds"] > 1 else ""
    return f"{r[metric]:.{digits}f}{spread}"


def comparisons(records: list[dict[str, Any]]) -> list[str]:
    """Each defended cell against the same algorithm undefended, in numbers."""
    plain = {r["algorithm"]: r for r in records if r["defence"] == "none"}
    lines = []
    for r in records:
        base = plain.get(r["algorithm"])
        if r["defence"] == "none" or base is None:
            continue
        change = 100 * (r["test_accuracy"] - base["test_accuracy"])
        lines.append(f"- `{r['cell']}` against `{r['algorithm']}`: accuracy {change:+.1f} points, attack SSIM "
                     f"{base['attack_ssim']:.3f} → {r['attack_ssim']:.3f}, attack MSE {base['attack_mse']:.4f} → "
                     f"{r['attack_mse']:.4f}, bias-corrected dCor² "
                     f"{base['dcor_sqr_bias_corrected']:.3f} → {r['dcor_sqr_bias_corrected']:.3f}.")
    return lines


def observations(records: list[dict[str, Any]], averaged: str) -> list[str]:
    """Plain sentences read off the cells: the attack against both floors, where it failed, and locfedmix vs psl;
    `averaged` says what the averaged attacker did."""
    plain = [r for r in records if r["defence"] == "none"]
    if not plain:
        return []
    low, high = min(plain, key=lambda r: r["attack_ssim"]), max(plain, key=lambda r: r["attack_ssim"])
    beaten = sum(r["attack_mse"] < r["mean_image_mse"] for r in plain)
    labelled = sum(r["attack_mse"] < r["class_mean_image_mse"] for r in plain)
    lines = [f"- Undefended, the attack's SSIM runs from {low['attack_ssim']:.3f} (`{low['cell']}`) to "
             f"{high['attack_ssim']:.3f} (`{high['cell']}`); its MSE beats the mean-image guess in {beaten} and the "
             f"class-mean guess in {labelled} of {len(plain)} algorithms."]
    lines += [label_floor_line(r) for r in records if r["attack_ssim"] <= r["class_mean_image_ssim"]
              and r["attack_mse"] < r["mean_image_mse"]]
    lines += [failed_attack_line(r, averaged) for r in records if r["attack_mse"] >= r["mean_image_mse"]]
    by_name = {r["algorithm"]: r for r in plain}
    if {"psl", "locfedmix"} <= set(by_name):
        lines.append(reconstruction_cost_line(by_name["locfedmix"], by_name["psl"]))
    return lines


def label_floor_line(r: dict[str, Any]) -> str:
    """A cell whose attack does not beat the class-mean image in SSIM, and what the averaged attack makes of it."""
    line = (f"- `{r['cell']}`: attack SSIM {r['attack_ssim']:.3f} against the class-mean image's "
            f"{r['class_mean_image_ssim']:.3f}: by SSIM this attacker recovers no more of the images' structure than "
            f"the label the server already has")
    mse_verdict = "beats" if r["attack_mse"] < r["class_mean_image_mse"] else "does not beat"
    line += f"; by MSE it {mse_verdict} the class mean ({r['attack_mse']:.4f} against {r['class_mean_image_mse']:.4f})."
    if not np.isnan(r["averaged_attack_ssim"]):
        verdict = "above" if r["averaged_attack_ssim"] > r["class_mean_image_ssim"] else "still not above"
        line += (f" The averaged attack reaches SSIM {r['averaged_attack_ssim']:.3f}, MSE "
                 f"{r['averaged_attack_mse']:.4f}: {verdict} the label's floor.")
    return line


def failed_attack_line(r: dict[str, Any], averaged: str) -> str:
    low, high = r["client_dcor_range"]
    line = (f"- `{r['cell']}`: the attack does worse than answering the mean image (MSE {r['attack_mse']:.4f} against "
            f"{r['mean_image_mse']:.4f}). That is a failed attacker, not a private upload: the bias-corrected dCor² "
            f"per client is still {low:.3f}–{high:.3f}.")
    if not np.isnan(r["averaged_attack_mse"]):
        verdict = "beats" if r["averaged_attack_mse"] < r["mean_image_mse"] else "still does not beat"
        line += (f" The stronger attacker ({averaged}) scores MSE "
                 f"{r['averaged_attack_mse']:.4f}, SSIM {r['averaged_attack_ssim']:.3f}: it {verdict} the mean image "
                 f"(class mean: MSE {r['class_mean_image_mse']:.4f}, SSIM {r['class_mean_image_ssim']:.3f}).")
    return line


def reconstruction_cost_line(ours: dict[str, Any], base: dict[str, Any]) -> str:
    """locfedmix against psl, seed by seed (the same seed gives both the same data and samples), for both attacks."""
    n = min(ours["seeds"], base["seeds"])
    parts = []
    for metric, name in (("attack_ssim", "attack"), ("averaged_attack_ssim", "averaged attack")):
        diffs = np.array(ours["per_seed"][metric][:n]) - np.array(base["per_seed"][metric][:n])
        if np.isnan(diffs).any():
            continue
        if n < 2:
            reading = "one seed cannot tell a difference from seed-to-seed spread"
        elif (diffs > 0).all() or (diffs < 0).all():
            reading = f"{'higher' if diffs[0] > 0 else 'lower'} for `locfedmix` on all {n} seeds"
        else:
            reading = f"the sign changes between seeds: no difference that {n} seeds resolve"
        parts.append(f"{name} SSIM {', '.join(f'{d:+.3f}' for d in diffs)} ({reading}; means "
                     f"{value(ours, metric, 3)} against {value(base, metric, 3)})")
    return (f"- LocFedMix-SL's reconstruction regularizer keeps input information in the smashed data by design. "
            f"`locfedmix` minus `psl`, per seed: {'; '.join(parts)}.")
