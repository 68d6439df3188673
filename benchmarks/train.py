"""Train and evaluate a registered model on a video or image dataset.

    python benchmarks/train.py --model mfnet --dataset motion --epochs 3
    python benchmarks/train.py --model mfnet --dataset ucf101 --root /data/UCF101 --split all \\
        --preset finetune --checkpoint MFNet3D_Kinetics-400_72.8.pth --seeds 0,1,2
    python benchmarks/train.py --model mfnet2d --dataset imagenet --root /data/imagenet \\
        --eval-only --checkpoint MFNet2D_ImageNet1k-0000.pth
    torchrun --nproc_per_node=8 benchmarks/train.py --model mfnet --dataset kinetics400 ...

SGD with Nesterov momentum and weight decay, a linear warm-up then a step or cosine schedule,
the authors' recipes as presets (docs/authors-release.md). Per-epoch train and validation
top-1 and clips/s go to the results store; the final multi-view evaluation reports clip-level
top-1 and video-level top-1/top-5 (softmax averaged over N clips x M crops per video). Every
accuracy row records where its weights came from. Checkpoints are written atomically every
epoch; ``--resume`` continues a killed run with the numbers an uninterrupted run gives. Under
``torchrun`` it runs DistributedDataParallel and only rank 0 writes. The work is in
``benchmarks/training/``.
"""

import sys

from benchmarks.training import options, train_all


def main(argv: list[str] | None = None) -> int:
    return train_all(options.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
