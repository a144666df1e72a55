"""Keypoint layouts and presets: the one place that names the points we read.

A *layout* is what one extractor writes into a `.pose` header: component names, point names and limbs
(`LAYOUTS`, each with a header builder). Each layout also says what its points *are*: a map from semantic
point names to its own `(component, point)` names. The semantic names:

  body       'nose', 'left_shoulder', 'left_wrist', 'left_hip', 'left_big_toe', 'neck', 'mid_hip', ...
             (COCO's names; MediaPipe's own body points lowercased: 'left_eye_inner', 'left_pinky', ...)
  hands      'left_hand.0' .. 'left_hand.20', 'right_hand.*': wrist, then thumb, index, middle, ring and
             pinky from base to tip (the 21-point hand of MediaPipe, OpenPose and COCO-WholeBody alike)
  face       'face_mesh.0' .. 'face_mesh.477' (MediaPipe face mesh, 468-477 the refined irises),
             'face68.0' .. 'face68.67' (the iBUG 300-W points of OpenPose, COCO-WholeBody and Halpe),
             'left_pupil', 'right_pupil' (OpenPose's points 69 and 68)

Left and right are the signer's own. The layouts:

  holistic_543 / _553 / _576 / _586   MediaPipe Holistic: pose 33 + face mesh 468 (553, 586: refined, 478)
                                      + 2x21 hands (+ 33 pose world landmarks in 576 / 586); xyz.
  holistic_reduced_178                pose-format's `reduce_holistic`: 8 pose, 128 face contour, 2x21 hands.
  openpose_137                        OpenPose BODY_25 + face 70 + 2x21 hands; xy.
  openpose_135                        OpenPose BODY_135 as pose-format names it (one component; its
                                      hands have no wrist point: 'left_hand.0' is the body's 'LWrist').
  coco_wholebody_133                  COCO-WholeBody (body 17 + feet 6 + face 68 + 2x21 hands) as
                                      pose-format's MMPose estimator writes it (RTMPose, RTMW, DWPose); xy.
  alphapose_133 / alphapose_136       AlphaPose WholeBody: the COCO-WholeBody points, or Halpe's 136
                                      (COCO 17 + head top, neck, pelvis + feet 6 + face 68 + 2x21 hands); xy.

MediaPipe Holistic cannot be installed next to our jax (it downgrades jax, numpy and protobuf), so
`pose_format.utils.holistic` is unusable and its layout is written out here. The names are the ones
pose-format writes into `.pose` headers (checked against the real
`pose-format/pose_viewer/sample-data/example.pose` and the reduced DGS files). The other layouts are
pose-format's own header components (`pose_format.utils.openpose`, `openpose_135`,
`cocowholebody133_header`, `alphapose`, `alphapose_133`).

A *preset* is a fixed, ordered tuple of semantic points (`PRESET_POINTS`), kept as the `(component,
point)` names of its home layout (`PRESETS`, `preset`). Applied to a file, it picks the points by name,
and, in a file of another layout, by what they are (`select_indices`): 'hands_body' takes the same 50
points in the same order from Holistic, OpenPose, COCO-WholeBody and AlphaPose files, so a model
trained on one reads the others. Where the file's layout lacks a point, a `MissingKeypointsError`
names it and the layout (no point is ever replaced by another, except the documented OpenPose-135 hand
wrists above).

  'holistic'      543: pose 33 + face mesh 468 + 2x21 hands (no world landmarks). Holistic files only.
  'reduced_178'   178: 8 pose + 128 face-mesh contour + 2x21 hands. Holistic files only.
  'youtube_asl'    85: 6 pose (shoulders, elbows, hips) + 37 face mesh (lips, eyes, brows, oval) + 2x21
                       hands, the counts of the YouTube-ASL paper (Uthus et al., 2023); the face subset
                       is ours. Holistic files only.
  'hands_body'     50: shoulders, elbows, wrists, hips + 2x21 hands. Every layout.
  'openpose_137'  137: OpenPose BODY_25 + face 70 + 2x21 hands. OpenPose 137 files (the others lack
                       the neck, the mid hip or the pupils).
  'wholebody_133' 133: COCO-WholeBody's points (body 17, feet 6, face 68, 2x21 hands). COCO-WholeBody,
                       AlphaPose and OpenPose files (Holistic has no face68 points and no small toes).

'reduced_178', 'youtube_asl' and 'hands_body' are subsets of the reduced DGS layout, so they read full
and reduced Holistic files alike. The 2D layouts carry no z: read with `coords='xyz'`, `pose_io` gives
them z = 0.
"""
import copy
import dataclasses
import re
from typing import Callable, Mapping, Sequence

import numpy as np
from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
from pose_format.utils import alphapose as _alphapose
from pose_format.utils import alphapose_133 as _alphapose_133
from pose_format.utils import cocowholebody133_header as _coco_wholebody
from pose_format.utils import openpose as _openpose
from pose_format.utils import openpose_135 as _openpose_135

# --- MediaPipe Holistic ---------------------------------------------------------------------------
POSE = 'POSE_LANDMARKS'
FACE = 'FACE_LANDMARKS'
LEFT_HAND = 'LEFT_HAND_LANDMARKS'
RIGHT_HAND = 'RIGHT_HAND_LANDMARKS'
POSE_WORLD = 'POSE_WORLD_LANDMARKS'

POSE_LANDMARKS = (
    'NOSE', 'LEFT_EYE_INNER', 'LEFT_EYE', 'LEFT_EYE_OUTER', 'RIGHT_EYE_INNER', 'RIGHT_EYE',
    'RIGHT_EYE_OUTER', 'LEFT_EAR', 'RIGHT_EAR', 'MOUTH_LEFT', 'MOUTH_RIGHT', 'LEFT_SHOULDER',
    'RIGHT_SHOULDER', 'LEFT_ELBOW', 'RIGHT_ELBOW', 'LEFT_WRIST', 'RIGHT_WRIST', 'LEFT_PINKY',
    'RIGHT_PINKY', 'LEFT_INDEX', 'RIGHT_INDEX', 'LEFT_THUMB', 'RIGHT_THUMB', 'LEFT_HIP', 'RIGHT_HIP',
    'LEFT_KNEE', 'RIGHT_KNEE', 'LEFT_ANKLE', 'RIGHT_ANKLE', 'LEFT_HEEL', 'RIGHT_HEEL',
    'LEFT_FOOT_INDEX', 'RIGHT_FOOT_INDEX')
POSE_WORLD_LANDMARKS = POSE_LANDMARKS
FACE_LANDMARKS = tuple(str(i) for i in range(468))
HAND_LANDMARKS = (
    'WRIST', 'THUMB_CMC', 'THUMB_MCP', 'THUMB_IP', 'THUMB_TIP', 'INDEX_FINGER_MCP',
    'INDEX_FINGER_PIP', 'INDEX_FINGER_DIP', 'INDEX_FINGER_TIP', 'MIDDLE_FINGER_MCP',
    'MIDDLE_FINGER_PIP', 'MIDDLE_FINGER_DIP', 'MIDDLE_FINGER_TIP', 'RING_FINGER_MCP',
    'RING_FINGER_PIP', 'RING_FINGER_DIP', 'RING_FINGER_TIP', 'PINKY_MCP', 'PINKY_PIP', 'PINKY_DIP',
    'PINKY_TIP')
LEFT_HAND_LANDMARKS = HAND_LANDMARKS
RIGHT_HAND_LANDMARKS = HAND_LANDMARKS

# mediapipe POSE_CONNECTIONS / HAND_CONNECTIONS (local indices), as found in the real headers.
POSE_LIMBS = (
    (0, 1), (0, 4), (1, 2), (2, 3), (3, 7), (4, 5), (5, 6), (6, 8), (9, 10), (11, 12), (11, 13),
    (11, 23), (12, 14), (12, 24), (13, 15), (14, 16), (15, 17), (15, 19), (15, 21), (16, 18),
    (16, 20), (16, 22), (17, 19), (18, 20), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28),
    (27, 29), (27, 31), (28, 30), (28, 32), (29, 31), (30, 32))
HAND_LIMBS = (
    (0, 1), (0, 5), (0, 17), (1, 2), (2, 3), (3, 4), (5, 6), (5, 9), (6, 7), (7, 8), (9, 10),
    (9, 13), (10, 11), (11, 12), (13, 14), (13, 17), (14, 15), (15, 16), (17, 18), (18, 19), (19, 20))
# Face contour connections in face-mesh indices (the limbs of the real reduced files, mapped back
# through their point names). Used instead of the 2556-edge tessellation: enough to draw a face.
FACE_CONTOUR_LIMBS = (
    (0, 37), (0, 267), (7, 33), (7, 163), (10, 109), (10, 338), (13, 82), (13, 312), (14, 87),
    (14, 317), (17, 84), (17, 314), (21, 54), (21, 162), (33, 246), (37, 39), (39, 40), (40, 185),
    (46, 53), (46, 63), (46, 70), (52, 53), (52, 63), (52, 65), (52, 66), (52, 105), (53, 63),
    (54, 103), (55, 65), (55, 107), (58, 132), (58, 172), (61, 146), (61, 185), (63, 70), (63, 105),
    (65, 66), (65, 107), (66, 105), (66, 107), (67, 103), (67, 109), (78, 95), (78, 191), (80, 81),
    (80, 191), (81, 82), (84, 181), (87, 178), (88, 95), (88, 178), (91, 146), (91, 181), (93, 132),
    (93, 234), (127, 162), (127, 234), (133, 155), (133, 173), (136, 150), (136, 172), (144, 145),
    (144, 163), (145, 153), (148, 152), (148, 176), (149, 150), (149, 176), (152, 377), (153, 154),
    (154, 155), (157, 158), (157, 173), (158, 159), (159, 160), (160, 161), (161, 246), (249, 263),
    (249, 390), (251, 284), (251, 389), (263, 466), (267, 269), (269, 270), (270, 409), (276, 283),
    (276, 293), (276, 300), (282, 283), (282, 293), (282, 295), (282, 296), (282, 334), (283, 293),
    (284, 332), (285, 295), (285, 336), (288, 361), (288, 397), (291, 375), (291, 409), (293, 300),
    (293, 334), (295, 296), (295, 336), (296, 334), (296, 336), (297, 332), (297, 338), (308, 324),
    (308, 415), (310, 311), (310, 415), (311, 312), (314, 405), (317, 402), (318, 324), (318, 402),
    (321, 375), (321, 405), (323, 361), (323, 454), (356, 389), (356, 454), (362, 382), (362, 398),
    (365, 379), (365, 397), (373, 374), (373, 390), (374, 380), (377, 400), (378, 379), (378, 400),
    (380, 381), (381, 382), (384, 385), (384, 398), (385, 386), (386, 387), (387, 388), (388, 466))
# The 128 face points of pose-format's `reduce_holistic` (mediapipe FACEMESH_CONTOURS), in file order.
FACE_CONTOUR_POINTS = (
    '0', '7', '10', '13', '14', '17', '21', '33', '37', '39', '40', '46', '52', '53', '54', '55', '58',
    '61', '63', '65', '66', '67', '70', '78', '80', '81', '82', '84', '87', '88', '91', '93', '95',
    '103', '105', '107', '109', '127', '132', '133', '136', '144', '145', '146', '148', '149', '150',
    '152', '153', '154', '155', '157', '158', '159', '160', '161', '162', '163', '172', '173', '176',
    '178', '181', '185', '191', '234', '246', '249', '251', '263', '267', '269', '270', '276', '282',
    '283', '284', '285', '288', '291', '293', '295', '296', '297', '300', '308', '310', '311', '312',
    '314', '317', '318', '321', '323', '324', '332', '334', '336', '338', '356', '361', '362', '365',
    '373', '374', '375', '377', '378', '379', '380', '381', '382', '384', '385', '386', '387', '388',
    '389', '390', '397', '398', '400', '402', '405', '409', '415', '454', '466')
# Left-right mirror of the 468 face-mesh points: FACE_MIRROR[i] is the point whose canonical position
# is the reflection of point i (an involution; from pose-format's FLIPPED_FACE_POINTS, which derives it
# from mediapipe's symmetric canonical face model).
FACE_MIRROR = (
    0, 1, 2, 248, 4, 5, 6, 249, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 250, 251, 252, 253, 254, 255,
    256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271, 272, 273, 274, 275, 276,
    277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287, 288, 289, 290, 291, 292, 293, 294, 295, 296, 297,
    298, 299, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318,
    319, 320, 321, 322, 323, 94, 324, 325, 326, 327, 328, 329, 330, 331, 332, 333, 334, 335, 336, 337, 338,
    339, 340, 341, 342, 343, 344, 345, 346, 347, 348, 349, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359,
    360, 361, 362, 363, 364, 365, 366, 367, 368, 369, 370, 371, 372, 373, 374, 375, 376, 377, 378, 379, 151,
    152, 380, 381, 382, 383, 384, 385, 386, 387, 388, 389, 390, 164, 391, 392, 393, 168, 394, 395, 396, 397,
    398, 399, 175, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417,
    418, 195, 419, 197, 420, 199, 200, 421, 422, 423, 424, 425, 426, 427, 428, 429, 430, 431, 432, 433, 434,
    435, 436, 437, 438, 439, 440, 441, 442, 443, 444, 445, 446, 447, 448, 449, 450, 451, 452, 453, 454, 455,
    456, 457, 458, 459, 460, 461, 462, 463, 464, 465, 466, 467, 3, 7, 20, 21, 22, 23, 24, 25, 26, 27, 28,
    29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54,
    55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105,
    106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126,
    127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147,
    148, 149, 150, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 165, 166, 167, 169, 170, 171, 172,
    173, 174, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194,
    196, 198, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219,
    220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240,
    241, 242, 243, 244, 245, 246, 247)
# Hand colours as pose-format writes them (values > 255 included: it is what the files carry).
_HAND_COLORS = (
    (232, 232, 232), (192, 0, 0), (227, 35, 35), (262, 70, 70), (297, 105, 105), (192, 192, 0),
    (227, 227, 35), (262, 262, 70), (297, 297, 105), (0, 192, 0), (35, 227, 35), (70, 262, 70),
    (105, 297, 105), (0, 192, 192), (35, 227, 227), (70, 262, 262), (105, 297, 297), (0, 0, 192),
    (35, 35, 227), (70, 70, 262), (105, 105, 297))

# --- OpenPose (names from pose-format, which has no mediapipe dependency for these) ----------------
OP_BODY = 'pose_keypoints_2d'
OP_FACE = 'face_keypoints_2d'
OP_LEFT_HAND = 'hand_left_keypoints_2d'
OP_RIGHT_HAND = 'hand_right_keypoints_2d'
OPENPOSE_BODY_25 = tuple(_openpose.BODY_POINTS)
OPENPOSE_FACE_70 = tuple(_openpose.FACE_POINTS)
OPENPOSE_HAND = tuple(_openpose.HAND_POINTS)
OP135 = 'BODY_135'  # openpose_135: one component, body 25 + left hand 20 + right hand 20 + face 70


def _face68_mirror() -> tuple[int, ...]:
  """Mirror partner of each of the 68 iBUG 300-W face points (OpenPose, COCO-WholeBody, Halpe)."""
  pairs = [(i, 16 - i) for i in range(17)]                                  # jaw line
  pairs += [(17 + i, 26 - i) for i in range(10)]                            # eyebrows
  pairs += [(27, 27), (28, 28), (29, 29), (30, 30)]                         # nose bridge
  pairs += [(31 + i, 35 - i) for i in range(5)]                             # nostrils
  pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]     # eyes
  pairs += [(45, 36), (44, 37), (43, 38), (42, 39), (47, 40), (46, 41)]
  pairs += [(48 + i, 54 - i) for i in range(7)] + [(55, 59), (56, 58), (57, 57), (58, 56), (59, 55)]
  pairs += [(60 + i, 64 - i) for i in range(5)] + [(65, 67), (66, 66), (67, 65)]
  table = dict(pairs)
  return tuple(table[i] for i in range(68))


FACE68_MIRROR = _face68_mirror()


# The pose points of pose-format's `reduce_holistic` (upper body).
REDUCED_POSE_POINTS = ('LEFT_SHOULDER', 'RIGHT_SHOULDER', 'LEFT_ELBOW', 'RIGHT_ELBOW', 'LEFT_WRIST',
                       'RIGHT_WRIST', 'LEFT_HIP', 'RIGHT_HIP')
REFINED_FACE_LANDMARKS = tuple(str(i) for i in range(468, 478))  # the irises of refine_face_landmarks


# --- headers -----------------------------------------------------------------------------------
def holistic_components(point_format: str = 'XYZC', with_world: bool = False,
                        reduced: bool = False, refined_face: bool = False) -> list[PoseHeaderComponent]:
  """Holistic header components (full 543 points, 553 with `refined_face`, or the reduced 178)."""
  face_points = FACE_CONTOUR_POINTS if reduced else FACE_LANDMARKS + (REFINED_FACE_LANDMARKS
                                                                     if refined_face else ())
  pose_points = REDUCED_POSE_POINTS if reduced else POSE_LANDMARKS

  def local(points, limbs, full_names):
    # limbs are indices into the full layout `full_names`; keep those whose ends are in `points`.
    index = {p: i for i, p in enumerate(points)}
    return [(index[full_names[a]], index[full_names[b]]) for a, b in limbs
            if full_names[a] in index and full_names[b] in index]

  pose_limbs = local(pose_points, POSE_LIMBS, POSE_LANDMARKS)
  face_limbs = local(face_points, FACE_CONTOUR_LIMBS, FACE_LANDMARKS)
  comps = [
      PoseHeaderComponent(POSE, list(pose_points), pose_limbs, [(255, 0, 0)], point_format),
      PoseHeaderComponent(FACE, list(face_points), face_limbs, [(128, 0, 0)], point_format),
      PoseHeaderComponent(LEFT_HAND, list(HAND_LANDMARKS), list(HAND_LIMBS), list(_HAND_COLORS),
                          point_format),
      PoseHeaderComponent(RIGHT_HAND, list(HAND_LANDMARKS), list(HAND_LIMBS), list(_HAND_COLORS),
                          point_format),
  ]
  if with_world:
    comps.append(PoseHeaderComponent(POSE_WORLD, list(POSE_WORLD_LANDMARKS), list(POSE_LIMBS),
                                     [(255, 0, 0)], point_format))
  return comps


def _header(components: list[PoseHeaderComponent], width: int, height: int, depth: int) -> PoseHeader:
  dims = PoseHeaderDimensions(width=width, height=height, depth=depth)
  return PoseHeader(version=0.2, dimensions=dims, components=components)


def holistic_header(width: int = 512, height: int = 512, depth: int = 0, with_world: bool = False,
                    reduced: bool = False, refined_face: bool = False) -> PoseHeader:
  """A MediaPipe Holistic `PoseHeader` (v0.2, XYZC) as pose-format would write it.

  543 points (+10 with `refined_face`, +33 with `with_world`), or the 178-point `reduce_holistic`
  layout with `reduced`.
  """
  return _header(holistic_components('XYZC', with_world=with_world, reduced=reduced,
                                     refined_face=refined_face), width, height, depth)


# --- layouts -----------------------------------------------------------------------------------
Keypoint = tuple[str, str]  # (component name, point name)


@dataclasses.dataclass(frozen=True)
class Layout:
  """What one extractor writes: its header components and what each of its points is."""
  name: str
  build_components: Callable[[], list[PoseHeaderComponent]]
  points: Mapping[str, Keypoint]  # semantic name -> (component, point); may name points a variant lacks
  dims: int                       # coordinates per point: 2 (x, y) or 3 (x, y, z)
  description: str

  def components(self) -> list[PoseHeaderComponent]:
    return self.build_components()

  def header(self, width: int = 1000, height: int = 1000, depth: int = 0) -> PoseHeader:
    """A v0.2 `PoseHeader` of this layout, as its extractor writes it."""
    return _header(self.components(), width, height, depth)

  @property
  def keypoints(self) -> tuple[Keypoint, ...]:
    """The layout's `(component, point)` names in file order."""
    return tuple((c.name, p) for c in self.components() for p in c.points)


def _snake(camel: str) -> str:
  """OpenPose body names -> semantic ones: 'LBigToe' -> 'left_big_toe', 'MidHip' -> 'mid_hip'."""
  side = {'L': 'left_', 'R': 'right_'}.get(camel[0], '') if camel[1:2].isupper() else ''
  rest = camel[1:] if side else camel
  return side + re.sub(r'(?<!^)([A-Z])', r'_\1', rest).lower()


def _hand_points(side: str, component: str, names: Sequence[str]) -> dict[str, Keypoint]:
  return {f'{side}_hand.{i}': (component, p) for i, p in enumerate(names)}


def _face68_points(component: str, names: Sequence[str]) -> dict[str, Keypoint]:
  return {f'face68.{i}': (component, p) for i, p in enumerate(names[:68])}


_HOLISTIC_POINTS = {
    **{p.lower(): (POSE, p) for p in POSE_LANDMARKS},
    **{f'face_mesh.{p}': (FACE, p) for p in FACE_LANDMARKS + REFINED_FACE_LANDMARKS},
    **_hand_points('left', LEFT_HAND, HAND_LANDMARKS), **_hand_points('right', RIGHT_HAND, HAND_LANDMARKS),
}
_OPENPOSE_137_POINTS = {
    **{_snake(p): (OP_BODY, p) for p in OPENPOSE_BODY_25},
    **_face68_points(OP_FACE, OPENPOSE_FACE_70),
    'right_pupil': (OP_FACE, OPENPOSE_FACE_70[68]), 'left_pupil': (OP_FACE, OPENPOSE_FACE_70[69]),
    **_hand_points('left', OP_LEFT_HAND, OPENPOSE_HAND), **_hand_points('right', OP_RIGHT_HAND, OPENPOSE_HAND),
}
_OPENPOSE_135_POINTS = {
    **{_snake(p): (OP135, p) for p in _openpose_135.BODY_POINTS},
    **_face68_points(OP135, _openpose_135.FACE_POINTS),
    'right_pupil': (OP135, 'RPupil'), 'left_pupil': (OP135, 'LPupil'),
    # BODY_135's hands start at the first thumb joint: their wrist is the body's (a documented substitute).
    **_hand_points('left', OP135, ['LWrist'] + _openpose_135.LEFT_HAND_POINTS),
    **_hand_points('right', OP135, ['RWrist'] + _openpose_135.RIGHT_HAND_POINTS),
}


def _wholebody_points(body: str, face: str, left: str, right: str, body_points: Sequence[str],
                      face_points: Sequence[str], hand_points: Sequence[str]) -> dict[str, Keypoint]:
  """COCO-WholeBody-style layouts: body points named like the semantic ones (Halpe's pelvis is the mid hip)."""
  return {**{{'pelvis': 'mid_hip'}.get(p, p): (body, p) for p in body_points},
          **_face68_points(face, face_points),
          **_hand_points('left', left, hand_points), **_hand_points('right', right, hand_points)}


_COCO_WHOLEBODY_POINTS = _wholebody_points('BODY', 'FACE', 'LEFT_HAND', 'RIGHT_HAND', _coco_wholebody.BODY_POINTS,
                                           _coco_wholebody.FACE_POINTS, _coco_wholebody.HAND_POINTS)
_ALPHAPOSE_133_POINTS = _wholebody_points('BODY_133', 'FACE_133', 'LEFT_HAND_133', 'RIGHT_HAND_133',
                                          _coco_wholebody.BODY_POINTS, _coco_wholebody.FACE_POINTS,
                                          _coco_wholebody.HAND_POINTS)
_ALPHAPOSE_136_POINTS = _wholebody_points('BODY_136', 'FACE_136', 'LEFT_HAND_136', 'RIGHT_HAND_136',
                                          _alphapose.BODY_POINTS, _alphapose.FACE_POINTS,
                                          _alphapose.GENERAL_HAND_POINTS)


def _holistic_layout(name: str, description: str, **kwargs) -> Layout:
  return Layout(name, lambda: holistic_components('XYZC', **kwargs), _HOLISTIC_POINTS, 3, description)


def _copied(components: list[PoseHeaderComponent]) -> Callable[[], list[PoseHeaderComponent]]:
  return lambda: copy.deepcopy(components)  # pose-format's module-level lists stay untouched


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    _holistic_layout('holistic_543', 'MediaPipe Holistic: pose 33, face mesh 468, 2x21 hands'),
    _holistic_layout('holistic_553', 'MediaPipe Holistic, refined face: pose 33, face mesh 478, 2x21 hands',
                     refined_face=True),
    _holistic_layout('holistic_576', 'MediaPipe Holistic + 33 pose world landmarks', with_world=True),
    _holistic_layout('holistic_586', 'MediaPipe Holistic, refined face, + 33 pose world landmarks',
                     refined_face=True, with_world=True),
    _holistic_layout('holistic_reduced_178', "pose-format's reduce_holistic: pose 8, face contour 128, "
                     '2x21 hands', reduced=True),
    Layout('openpose_137', _copied(_openpose.OpenPose_Components), _OPENPOSE_137_POINTS, 2,
           'OpenPose BODY_25, face 70, 2x21 hands'),
    Layout('openpose_135', _copied(_openpose_135.OpenPose_Components), _OPENPOSE_135_POINTS, 2,
           'OpenPose BODY_135 (one component): body 25, 2x20 hand joints, face 70'),
    Layout('coco_wholebody_133', _coco_wholebody.cocowholebody_components, _COCO_WHOLEBODY_POINTS, 2,
           'COCO-WholeBody (MMPose: RTMPose, RTMW, DWPose): body 17, feet 6, face 68, 2x21 hands'),
    Layout('alphapose_133', _alphapose_133.get_alphapose_133_components, _ALPHAPOSE_133_POINTS, 2,
           'AlphaPose WholeBody-133: the COCO-WholeBody points'),
    Layout('alphapose_136', _alphapose.get_alphapose_components, _ALPHAPOSE_136_POINTS, 2,
           'AlphaPose Halpe-136: body 26 (COCO 17, head top, neck, pelvis, feet 6), face 68, 2x21 hands'),
)}
_LAYOUT_KEYPOINTS = {name: frozenset(layout.keypoints) for name, layout in LAYOUTS.items()}
_LAYOUT_ORDER = {name: layout.keypoints for name, layout in LAYOUTS.items()}


def layout(name: str) -> Layout:
  if name not in LAYOUTS:
    raise ValueError(f'Unknown keypoint layout {name!r}; known: {sorted(LAYOUTS)}')
  return LAYOUTS[name]


def detect_layout(file_points: Sequence[Keypoint] | PoseHeader) -> Layout | None:
  """The layout of a file's points: the one it equals, else the one it shares most points with."""
  if isinstance(file_points, PoseHeader):
    file_points = header_keypoints(file_points)
  points = tuple(map(tuple, file_points))
  for name, order in _LAYOUT_ORDER.items():
    if order == points:
      return LAYOUTS[name]
  have = set(points)
  shared = {name: len(have & keypoints) for name, keypoints in _LAYOUT_KEYPOINTS.items()}
  best = max(shared, key=shared.get)
  return LAYOUTS[best] if shared[best] else None


# (component, point) -> (its semantic name, the points map of its layout). For a point that stands for
# two (openpose_135's wrists are also its hands' roots) the body meaning comes first.
_SEMANTIC: dict[Keypoint, tuple[str, Mapping[str, Keypoint]]] = {}
for _layout in LAYOUTS.values():
  for _name, _kp in _layout.points.items():
    _SEMANTIC.setdefault(_kp, (_name, _layout.points))


def semantic_name(kp: Keypoint) -> str | None:
  """What a `(component, point)` of a known layout is ('left_wrist', 'left_hand.0', ...), else None."""
  entry = _SEMANTIC.get(tuple(kp))
  return entry[0] if entry else None


# --- presets -----------------------------------------------------------------------------------
_YOUTUBE_ASL_POSE = ('LEFT_SHOULDER', 'RIGHT_SHOULDER', 'LEFT_ELBOW', 'RIGHT_ELBOW', 'LEFT_HIP',
                     'RIGHT_HIP')
# 37 face-mesh points, all inside the contour set (so reduced files have them); all but '172' have
# their mirror partner in the set.
_YOUTUBE_ASL_FACE = tuple(str(i) for i in (
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,   # outer lips (12)
    78, 13, 308, 14,                                        # inner lips (4)
    33, 159, 133, 145, 263, 386, 362, 374,                  # eyes (8)
    70, 105, 107, 300, 334, 336,                            # eyebrows (6)
    10, 152, 234, 454, 132, 361, 172))                      # face oval (7)


def _body(names: Sequence[str]) -> tuple[str, ...]:
  return tuple(n.lower() for n in names)


def _face_mesh(names: Sequence[str]) -> tuple[str, ...]:
  return tuple(f'face_mesh.{n}' for n in names)


_HANDS = tuple(f'{side}_hand.{i}' for side in ('left', 'right') for i in range(21))
_FACE68 = tuple(f'face68.{i}' for i in range(68))

# preset -> (its home layout, its semantic points in feature order)
_PRESET_DEFINITIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    'holistic': ('holistic_543', _body(POSE_LANDMARKS) + _face_mesh(FACE_LANDMARKS) + _HANDS),
    'reduced_178': ('holistic_543', _body(REDUCED_POSE_POINTS) + _face_mesh(FACE_CONTOUR_POINTS) + _HANDS),
    'youtube_asl': ('holistic_543', _body(_YOUTUBE_ASL_POSE) + _face_mesh(_YOUTUBE_ASL_FACE) + _HANDS),
    'hands_body': ('holistic_543', _body(REDUCED_POSE_POINTS) + _HANDS),
    'openpose_137': ('openpose_137', tuple(_snake(p) for p in OPENPOSE_BODY_25) + _FACE68
                     + ('right_pupil', 'left_pupil') + _HANDS),
    'wholebody_133': ('coco_wholebody_133', tuple(_coco_wholebody.BODY_POINTS) + _FACE68 + _HANDS),
}
PRESET_POINTS: dict[str, tuple[str, ...]] = {name: points for name, (_, points) in _PRESET_DEFINITIONS.items()}
PRESETS: dict[str, tuple[Keypoint, ...]] = {
    name: tuple(LAYOUTS[home].points[s] for s in points) for name, (home, points) in _PRESET_DEFINITIONS.items()}


class MissingKeypointsError(ValueError):
  """A preset needs points that a file's header does not have."""


def preset(name: str) -> tuple[Keypoint, ...]:
  """The ordered `(component, point)` list of a preset, in its home layout's names."""
  if name not in PRESETS:
    raise ValueError(f'Unknown keypoint preset {name!r}; known: {sorted(PRESETS)}')
  return PRESETS[name]


def header_keypoints(header: PoseHeader) -> tuple[Keypoint, ...]:
  """All `(component, point)` names of a header, in the file's global point order."""
  return tuple((c.name, p) for c in header.components for p in c.points)


def select_indices(file_points: Sequence[Keypoint] | PoseHeader, wanted: str | Sequence[Keypoint],
                   source: str = '') -> np.ndarray:
  """Global point indices (int32[K]) in a file of the points of a preset (or explicit list).

  A point is taken by its name, or, where the file is of another layout, as the file's point of the
  same semantic name. Raises MissingKeypointsError naming the missing points, the file's layout and
  `source` (e.g. the file name).
  """
  if isinstance(file_points, PoseHeader):
    file_points = header_keypoints(file_points)
  file_points = tuple(map(tuple, file_points))
  wanted_points = preset(wanted) if isinstance(wanted, str) else tuple(map(tuple, wanted))
  index = {}
  for i, kp in enumerate(file_points):
    index.setdefault(kp, i)
  file_layout = None
  found, missing = [], []
  for kp in wanted_points:
    i = index.get(kp)
    if i is None:
      file_layout = file_layout or detect_layout(file_points)
      name = semantic_name(kp)
      if file_layout is not None and name in file_layout.points:
        i = index.get(file_layout.points[name])
    if i is None:
      missing.append(kp)
    found.append(i)
  if missing:
    raise MissingKeypointsError(_missing_message(missing, file_points, file_layout, wanted, source))
  return np.asarray(found, np.int32)


def _missing_message(missing, file_points, file_layout, wanted, source) -> str:
  def show(kp):
    name = semantic_name(kp)
    return f'{kp[0]}:{kp[1]}' + (f' ({name})' if name and name != kp[1] else '')

  shown = ', '.join(show(kp) for kp in missing[:12])
  more = f' (+{len(missing) - 12} more)' if len(missing) > 12 else ''
  label = f' {wanted!r}' if isinstance(wanted, str) else ''
  comps = sorted({c for c, _ in file_points})
  if file_layout is None:
    where = f'The file\'s components {comps} are of no known layout ({sorted(LAYOUTS)}).'
  else:
    where = (f'The file is of layout {file_layout.name!r} (components {comps}); the presets each layout '
             f'has are in the README ("Keypoint layouts").')
  return (f'{source + ": " if source else ""}keypoint preset{label} needs {len(missing)} point(s) '
          f'the file lacks: {shown}{more}. {where}')


# --- semantic lookups used by normalisation and mirroring -----------------------------------------
def _unique(pairs):
  return tuple(dict.fromkeys(pairs))


# (left, right) shoulder names per layout.
SHOULDERS: tuple[tuple[Keypoint, Keypoint], ...] = _unique(
    (l.points['left_shoulder'], l.points['right_shoulder']) for l in LAYOUTS.values())
# hand component -> (wrist point, middle-finger base point): the hand's origin and its size. Only hands
# that are a component of their own (not openpose_135's, whose hands share the body's component).
HANDS: dict[str, tuple[str, str]] = {
    wrist[0]: (wrist[1], base[1])
    for l in LAYOUTS.values() for side in ('left', 'right')
    for wrist, base in [(l.points[f'{side}_hand.0'], l.points[f'{side}_hand.9'])]
    if wrist[0] == base[0] != l.points[f'{side}_shoulder'][0]}


def _swap(name: str, left: str, right: str) -> str:
  return name.replace(left, '\0').replace(right, left).replace('\0', right)


def mirror_point_name(name: str) -> str:
  """The semantic point a left-right mirror maps `name` onto ('left_hand.3' -> 'right_hand.3')."""
  family, dot, number = name.partition('.')
  if family == 'face_mesh':
    i = int(number)
    return f'face_mesh.{FACE_MIRROR[i]}' if i < len(FACE_MIRROR) else name  # irises: not mirrored
  if family == 'face68':
    return f'face68.{FACE68_MIRROR[int(number)]}'
  swapped = '_'.join({'left': 'right', 'right': 'left'}.get(t, t) for t in family.split('_'))
  return swapped + dot + number


def mirror_keypoint(kp: Keypoint) -> Keypoint:
  """The keypoint that a left-right mirror maps `kp` onto (itself for points on the midline)."""
  kp = tuple(kp)
  if kp in _SEMANTIC:
    name, points = _SEMANTIC[kp]
    return points.get(mirror_point_name(name), kp)
  comp, point = kp
  if comp == POSE_WORLD:
    return comp, _swap(point, 'LEFT', 'RIGHT')
  return kp


def mirror_permutation(points: Sequence[Keypoint]) -> np.ndarray:
  """perm (int32[K]) such that mirrored[:, k] = points[:, perm[k]] (then negate x).

  A point whose mirror partner is not in `points` stays in place.
  """
  index = {tuple(kp): i for i, kp in enumerate(points)}
  return np.asarray([index.get(mirror_keypoint(tuple(kp)), i) for i, kp in enumerate(points)],
                    np.int32)
