#!/usr/bin/env bash
# The same tasks from the command line, on an h5ad of raw counts with obs 'batch' and 'cell_type'.
set -euo pipefail
DATA=${1:?usage: cli.sh DATA.h5ad}
pysave train "$DATA" --condition batch --condition cell_type --batch-key batch --out model \
    --n-blocks 16 --hidden-size 128 --condition-dim 256 --encoder-layers 2 --decoder-layers 2 --lr 1e-3 --epochs 60
pysave info model --blocks blocks.tsv
pysave generate model --n 500 --set cell_type=B --set batch=10x_5prime --out generated.h5ad
pysave generate model --n 500 --set cell_type=B --set batch=10x_5prime --shift-from batch=10x_3prime_v2 \
    --out generated_by_shift.h5ad   # sampled as 3' v2 B cells, then the latent shift to 5'
pysave transfer model "$DATA" --set batch=10x_3prime_v2 --out transferred.h5ad
pysave embed model "$DATA" --out embedded.h5ad
pysave correct model "$DATA" --out corrected.h5ad
pysave correct model "$DATA" --reference all --out corrected_mean.h5ad   # averaged over every batch
pysave attention model "$DATA" --by cell_type --out attention.tsv --plot attention.png
