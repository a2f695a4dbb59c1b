"""Attacks (adversarial, backdoor and data poisoning) that turn real images into attacked "fake" sets.

`ATTACKS` maps an attack name to its class, imported lazily: importing `attacks` never imports torch,
timm, torchattacks, ART, diffusers or transformers. Attack *presets* are YAML files under
configs/attacks/ (one per attack); a build config's set uses one exactly like a generator preset
(`{name: adversarial, generator: adv_vnifgsm}`), through the `attack` generator type
(`generators/attack.py`). torchattacks- and ART-based attacks need the optional extra:
`pip install -e ".[attacks]"` (torchattacks pins an old `requests`, which is why it is not core).
"""
from __future__ import annotations

from fakeforge.registry import Registry

ATTACKS = Registry("attack")
# adversarial (torchattacks, L-inf transfer attacks on a timm surrogate)
ATTACKS.register("fgsm", "attacks.fgsm:FGSM", "FGSM (Goodfellow et al. 2015), one signed-gradient step")
ATTACKS.register("pgd", "attacks.pgd:PGD", "PGD (Madry et al. 2018), projected iterations from a random start")
ATTACKS.register("mifgsm", "attacks.mifgsm:MIFGSM", "MI-FGSM (Dong et al. 2018), momentum")
ATTACKS.register("nifgsm", "attacks.nifgsm:NIFGSM", "NI-FGSM (Lin et al. 2020), Nesterov momentum")
ATTACKS.register("vnifgsm", "attacks.vnifgsm:VNIFGSM", "VNI-FGSM (Wang & He 2021), variance tuning")
# backdoor triggers
ATTACKS.register("badnets", "attacks.badnets:BadNets", "BadNets (Gu et al. 2017), a patch at a position")
ATTACKS.register("blended", "attacks.blended:Blended", "Blended (Chen et al. 2017), a trigger image at a ratio")
ATTACKS.register("wanet", "attacks.wanet:WaNet", "WaNet (Nguyen & Tran 2021), a smooth warping field")
ATTACKS.register("issba", "attacks.issba:ISSBA", "ISSBA (Li et al. 2021), StegaStamp sample-specific trigger")
# clean-label data poisoning
ATTACKS.register("feature_collision", "attacks.feature_collision:FeatureCollision",
                 "Poison Frogs feature collision (Shafahi et al. 2018), L-inf bounded")
ATTACKS.register("gradient_matching", "attacks.gradient_matching:GradientMatching",
                 "Witches' Brew gradient matching (Geiping et al. 2021), via ART")
