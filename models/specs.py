"""Model specs: how to build and run each model.

Each ``ModelSpec`` says what to build, at which input its cost is quoted (the paper's), its
normalisation, and where the implementation comes from. What was *published* about a model
(params, multiply-adds, accuracies, the documented discrepancies) is in ``models/ledger.py``,
the one place for the paper's figures.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from models import c3d, fast_path, i3d, library, mfnet, resnext3d

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The authors' release (docs/authors-release.md): RGB in [0,1], mean (124,117,104)/255, std 1/(0.0167*255)
MFNET_MEAN = (124 / 255, 117 / 255, 104 / 255)
MFNET_STD = (1 / (0.0167 * 255),) * 3
# torchvision's Kinetics-400 video weights' normalisation
KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
# I3D's release scales RGB to [-1, 1]
I3D_MEAN, I3D_STD = (0.5,) * 3, (0.5,) * 3
# PyTorchVideo's X3D transforms
X3D_MEAN, X3D_STD = (0.45,) * 3, (0.225,) * 3


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module] = field(repr=False)
    input_shape: tuple[int, ...]  # (C, T, H, W) for clips, (C, H, W) for images
    num_classes: int
    provenance: str  # "ours" or the library function it comes from
    fidelity: str  # "exact": published architecture; "approximate": widths chosen to match cost
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    design_note: str = ""  # for approximate models: how the unpublished widths were chosen
    in_paper: bool = True  # appears in one of the paper's tables
    display_name: str = ""  # as a reader says it; "" falls back to the registry name
    family: str = ""  # "frame": a 2D model run per frame of a clip; otherwise free text
    # the smallest (C, [T,] H, W) the model accepts (None: the suite's small test input works)
    min_input: tuple[int, ...] | None = None
    origin: str = "suite"  # "suite", or "user" for a model registered from outside the repository

    @property
    def is_video(self) -> bool:
        """Takes clips (N, C, T, H, W); otherwise images (N, C, H, W)."""
        return len(self.input_shape) == 4



IMAGE = (3, 224, 224)
MF_SEARCH = ("Unpublished architecture: the paper gives only its cost. {what} were chosen by a grid "
             "search over widths and depths for the closest match to Table 1's params and "
             "multiply-adds ({result}).")

SPECS: tuple[ModelSpec, ...] = (
    # ---- MF-Net family (models/mfnet.py) ----
    ModelSpec(
        "mfnet", fast_path.mfnet3d, (3, 16, 224, 224), 400, "ours (models/mfnet.py)", "exact", MFNET_MEAN,
        MFNET_STD),
    ModelSpec(
        "mfnet2d", mfnet.mfnet2d, IMAGE, 1000, "ours (models/mfnet.py)", "exact",
        design_note="The authors' MXNet 2D definition is not public; this is the 3D net with "
                    "every temporal extent and stride set to 1, as the authors describe."),
    ModelSpec(
        "mfnet2d_n12", mfnet.mfnet2d_n12, IMAGE, 1000, "ours (models/mfnet.py)", "approximate",
        design_note=MF_SEARCH.format(
            what="With 12 fibers at Table 2's widths the net is 6.56 M / 0.99 G, so a 12-channel "
                 "stem, conv5 width 720 and 5 units in conv4",
            result="5.81 M, 0.913 G")),
    ModelSpec(
        "mfnet2d_n24", mfnet.mfnet2d_n24, IMAGE, 1000, "ours (models/mfnet.py)", "approximate",
        design_note=MF_SEARCH.format(
            what="A 24-channel stem, widths (96, 240, 432, 864) and 5 units in conv4",
            result="5.89 M, 0.891 G")),
    ModelSpec(
        "mfnet2d_nomux", mfnet.mfnet2d_nomux, IMAGE, 1000, "ours (models/mfnet.py)", "approximate",
        design_note="2D MF-Net with the multiplexer removed and nothing else changed "
                    "(4.49 M, 0.597 G)."),
    ModelSpec(
        "mfnet2d_nomux_wide", mfnet.mfnet2d_nomux_wide, IMAGE, 1000, "ours (models/mfnet.py)",
        "approximate",
        design_note=MF_SEARCH.format(
            what="Without the multiplexer, \"deeper & wider\": widths (112, 224, 448, 896) and "
                 "8 units in conv4",
            result="6.41 M, 0.894 G")),
    ModelSpec(
        "resnet18_mf", mfnet.resnet18_mf, IMAGE, 1000, "ours (models/mfnet.py)", "approximate",
        design_note=MF_SEARCH.format(
            what="ResNet-18's 7x7 stem (64 channels) and depths (2, 2, 2, 2) with MF units "
                 "(16 fibers) of widths (192, 320, 640, 1280)",
            result="9.33 M, 1.592 G")),
    ModelSpec(
        "mobilenetv2_140_mf", mfnet.mobilenetv2_140_mf, IMAGE, 1000, "ours (models/mfnet.py)",
        "approximate",
        design_note=MF_SEARCH.format(
            what="MobileNet-v2 x1.4's layout with each inverted residual's 1x1 convs sliced into "
                 "2 fibers, a multiplexer of width hidden/16, and expansion 10 instead of 6",
            result="5.95 M, 0.575 G")),
    # ---- 3D baselines ----
    ModelSpec(
        "i3d", i3d.i3d, (3, 64, 224, 224), 400, "ours (models/i3d.py)", "exact", I3D_MEAN, I3D_STD),
    ModelSpec(
        "s3d", library.s3d, (3, 64, 224, 224), 400, "torchvision.models.video.s3d", "exact",
        KINETICS_MEAN, KINETICS_STD,
        # torchvision's S3D pools with a fixed (2, 7, 7) window before its classifier
        min_input=(3, 16, 224, 224)),
    ModelSpec(
        "r2plus1d", library.r2plus1d_34, (3, 32, 112, 112), 400,
        "torchvision.models.video.resnet.VideoResNet(BasicBlock, [Conv2Plus1D]*4, [3,4,6,3], "
        "R2Plus1dStem)",
        "exact", KINETICS_MEAN, KINETICS_STD,
        design_note="torchvision's VideoResNet with R(2+1)D's stem and (2+1)D convs at the "
                    "R(2+1)D-34 depths (3, 4, 6, 3); the published costs are in the ledger."),
    ModelSpec(
        "res3d", library.res3d, (3, 8, 112, 112), 400, "torchvision.models.video.r3d_18", "exact",
        KINETICS_MEAN, KINETICS_STD),
    ModelSpec(
        "c3d", c3d.c3d, (3, 16, 112, 112), 400, "ours (models/c3d.py)", "exact", KINETICS_MEAN,
        KINETICS_STD),
    ModelSpec(
        "resnext3d", resnext3d.resnext3d_101, (3, 16, 112, 112), 400, "ours (models/resnext3d.py)",
        "exact",
        mean=KINETICS_MEAN,
        std=KINETICS_STD,
        in_paper=False),
    ModelSpec(
        "x3d_xs", library.x3d(clip_length=4, crop_size=160, depth_factor=2.2), (3, 4, 182, 182), 400,
        "pytorchvideo.models.x3d.create_x3d", "exact", X3D_MEAN, X3D_STD,
        in_paper=False),
    ModelSpec(
        "x3d_s", library.x3d(clip_length=13, crop_size=160, depth_factor=2.2), (3, 13, 182, 182), 400,
        "pytorchvideo.models.x3d.create_x3d", "exact", X3D_MEAN, X3D_STD,
        in_paper=False),
    ModelSpec(
        "x3d_m", library.x3d(clip_length=16, crop_size=224, depth_factor=2.2), (3, 16, 256, 256), 400,
        "pytorchvideo.models.x3d.create_x3d", "exact", X3D_MEAN, X3D_STD,
        in_paper=False),
    # ---- 2D baselines ----
    ModelSpec(
        "resnet18", library.timm_model("resnet18"), IMAGE, 1000, "timm.create_model('resnet18')",
        "exact"),
    ModelSpec(
        "resnet50", library.timm_model("resnet50"), IMAGE, 1000, "timm.create_model('resnet50')",
        "exact"),
    ModelSpec(
        "resnet152", library.timm_model("resnet152"), IMAGE, 1000, "timm.create_model('resnet152')",
        "exact",
        in_paper=True),
    ModelSpec(
        "resnext26", library.resnext26_8x16d, IMAGE, 1000,
        "timm.models.resnet.ResNet(Bottleneck, [2,2,2,2], cardinality=8, base_width=16, "
        "channels=(40,80,152,280))",
        "approximate",
        design_note="ResNeXt-26 \"of our design\": only the cost is published; standard widths "
                    "give 17.7 M / 2.82 G. Planes (40, 80, 152, 280) from a grid search: "
                    "6.17 M, 1.11 G."),
    ModelSpec(
        "mobilenetv2_140",
        library.timm_model("mobilenetv2_140"),
        IMAGE,
        1000,
        "timm.create_model('mobilenetv2_140')",
        "exact"),
)


def frame_spec(spec: ModelSpec) -> ModelSpec:
    """``X_frames``: the 2D model ``X`` run on every frame of a clip, logits averaged.
    Table 4 quotes frame-based costs per frame, so the cost input is one frame."""

    def build(*, num_classes: int = spec.num_classes, **kwargs) -> nn.Module:
        return library.FrameClassifier(spec.builder(num_classes=num_classes, **kwargs))

    return ModelSpec(
        f"{spec.name}_frames", build, (3, 1) + spec.input_shape[1:], spec.num_classes,
        f"{spec.provenance}, per frame via models.library.FrameClassifier", spec.fidelity,
        spec.mean, spec.std, spec.design_note, in_paper=spec.name in ("resnet50", "resnet152"),
        family="frame", min_input=(3, 1, 32, 32))


ALL_SPECS: tuple[ModelSpec, ...] = SPECS + tuple(frame_spec(s) for s in SPECS if not s.is_video)
