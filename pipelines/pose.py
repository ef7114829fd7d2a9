"""The `pose` ControlNet preprocessor: a human pose estimator (transformers' ViTPose) turns each
frame into an OpenPose-style skeleton, the control image ControlNet-openpose models were trained on.

ViTPose is a top-down estimator: it finds the joints of one person inside a given box. There is no
person detector here: the whole frame is the box, since a webcam user is framed by the camera (a
crowd gets one skeleton at best). The frame is letterboxed to the model's aspect ratio (black bars,
as the model's own affine crop pads) rather than stretched, so the person keeps their proportions.

The network and the decoding of its heatmaps (argmax per joint, mapped back to frame pixels) run on
the pipeline's device for all the frames of a call at once. Drawing the skeleton is a host step, as
`canny` is: OpenCV fills the limbs and joints, which has no tensor equivalent worth writing; only
the keypoints and their scores cross to the host, not the frames.

The drawing follows OpenPose's body layout (18 points: COCO's 17 reordered, plus the neck as the
midpoint of the shoulders) and its standard colours, stick width and joint radius, as the
`controlnet_aux` OpenPose detector draws them.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from livediff.pipelines.preprocessors.pose import DEFAULT_THRESHOLD

#: COCO keypoints a body model must predict first (nose, eyes, ears, shoulders … ankles)
COCO_KEYPOINTS = 17
#: OpenPose body point → COCO keypoint (None: the neck, the midpoint of the shoulders 5 and 6)
OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
COCO_SHOULDERS = (5, 6)
#: OpenPose's limbs as (point, point) in its 18-point layout, in its drawing (and colour) order
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
#: OpenPose's colours (RGB): limb i and point i use COLOURS[i]
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
#: limbs are drawn at 60 % of their colour and joints at full colour, so joints stand out on limbs
LIMB_BRIGHTNESS = 0.6
STICK_WIDTH = 4
JOINT_RADIUS = 4
#: ViTPose's input normalisation (its image processor's ImageNet mean and std)
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

Region = tuple[float, float, float, float]  # left, top, width, height in frame pixels


def letterbox_region(height: int, width: int, input_height: int, input_width: int) -> Region:
    """The frame grown, centred, to the model's aspect ratio: the area the model input shows."""
    region_width = max(width, round(height * input_width / input_height))
    region_height = max(height, round(width * input_height / input_width))
    return (-((region_width - width) // 2), -((region_height - height) // 2), region_width, region_height)


def model_input(images: torch.Tensor, region: Region, input_size: tuple[int, int]) -> torch.Tensor:
    """(F,3,H,W) frames in [-1,1] → ViTPose's pixel values: letterboxed to `region` (black bars),
    resized to `input_size` (height, width) and normalised as its image processor does."""
    left, top, region_width, region_height = (int(v) for v in region)
    pixels = (images.clamp(-1, 1) + 1) / 2
    right = region_width - images.shape[-1] + left
    bottom = region_height - images.shape[-2] + top
    padded = F.pad(pixels, (-left, right, -top, bottom))
    resized = F.interpolate(padded, size=input_size, mode="bilinear", align_corners=False)
    mean = resized.new_tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = resized.new_tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (resized - mean) / std


def decode_heatmaps(heatmaps: torch.Tensor, region: Region) -> tuple[torch.Tensor, torch.Tensor]:
    """(F,K,h,w) heatmaps covering `region` → keypoints (F,K,2) as (x, y) frame pixels and their
    scores (F,K), the heatmap maxima. Argmax per joint: a heatmap cell is `region`/(h,w) frame
    pixels wide, which is the precision; pixel centres map to pixel centres."""
    rows, cols = heatmaps.shape[-2:]
    scores, index = heatmaps.flatten(2).max(dim=2)
    left, top, width, height = region
    x = left + ((index % cols).to(scores.dtype) + 0.5) * (width / cols) - 0.5
    y = top + (torch.div(index, cols, rounding_mode="floor").to(scores.dtype) + 0.5) * (height / rows) - 0.5
    return torch.stack((x, y), dim=-1), scores


def estimate_keypoints(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F,3,H,W) frames in [-1,1] → COCO-17 keypoints (F,17,2) in frame pixels and scores (F,17):
    one model run for all the frames, on their device. ViTPose+ (mixture-of-experts) models get
    dataset 0, COCO."""
    backbone = model.config.backbone_config
    input_size = tuple(backbone.image_size)
    region = letterbox_region(*images.shape[-2:], *input_size)
    pixels = model_input(images.float(), region, input_size).to(model.dtype)
    extra = {}
    if getattr(backbone, "num_experts", 1) > 1:
        extra["dataset_index"] = torch.zeros(len(images), dtype=torch.long, device=images.device)
    heatmaps = model(pixel_values=pixels, **extra).heatmaps[:, :COCO_KEYPOINTS]
    return decode_heatmaps(heatmaps.float(), region)


def to_openpose(keypoints: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """COCO-17 (F,17,2) / (F,17) → OpenPose's 18 points; the neck is the shoulders' midpoint and
    only as sure as the less sure shoulder."""
    shoulders = list(COCO_SHOULDERS)
    neck = keypoints[:, shoulders].mean(dim=1, keepdim=True)
    neck_score = scores[:, shoulders].amin(dim=1, keepdim=True)
    order = [0 if i is None else i for i in OPENPOSE_FROM_COCO]
    points, point_scores = keypoints[:, order].clone(), scores[:, order].clone()
    points[:, 1:2], point_scores[:, 1:2] = neck, neck_score
    return points, point_scores


def draw_skeleton(points: np.ndarray, scores: np.ndarray, height: int, width: int, threshold: float) -> np.ndarray:
    """OpenPose's 18 points (18,2) and scores (18,) → an (H,W,3) uint8 RGB skeleton on black;
    points scored under `threshold`, and the limbs they end, are left out."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    seen = scores >= threshold
    for (a, b), colour in zip(LIMBS, COLOURS):
        if seen[a] and seen[b]:
            _draw_limb(canvas, points[a], points[b], tuple(int(c * LIMB_BRIGHTNESS) for c in colour))
    for point, colour, visible in zip(points, COLOURS, seen):
        if visible:
            cv2.circle(canvas, (int(point[0]), int(point[1])), JOINT_RADIUS, colour, thickness=-1)
    return canvas


def _draw_limb(canvas: np.ndarray, start: np.ndarray, end: np.ndarray, colour: tuple[int, ...]) -> None:
    """A filled ellipse from `start` to `end`, `STICK_WIDTH` thick: OpenPose's limb shape."""
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0)
    angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
    centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
    polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
    cv2.fillConvexPoly(canvas, polygon, colour)


def pose_map(model, images: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """(F,3,H,W) frames in [-1,1] → their skeletons (F,3,H,W) in [0,1], on the frames' device."""
    points, scores = to_openpose(*estimate_keypoints(model, images))
    points, scores = points.cpu().numpy(), scores.cpu().numpy()
    height, width = images.shape[-2:]
    drawn = np.stack([draw_skeleton(p, s, height, width, threshold) for p, s in zip(points, scores)])
    skeletons = torch.from_numpy(drawn).permute(0, 3, 1, 2).to(torch.float32) / 255
    return skeletons.to(images.device, images.dtype)
