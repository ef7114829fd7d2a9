"""Evaluation of restyled video (`livediff eval`): temporal consistency along the source's optical flow."""
