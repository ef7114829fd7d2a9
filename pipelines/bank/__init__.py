"""The feature bank of the video pipeline (StreamV2V-style temporal memory) and its parts.

config.BankConfig (settings), feature_bank.FeatureBank (state between UNet calls),
unet.BankedUNet (the UNet as a pure function with the bank as explicit inputs/outputs),
layout.BankLayout (their fixed tensor layout), attention (the processors), fusion, merge,
sparse, scene_cut (pure parts). Submodules are imported directly, so importing one part does not
pull in the others.
"""
