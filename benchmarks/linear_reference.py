"""Reference point for the quality goal: a *linear* two-tower trained as Mult-DAE.

Not the product's model. It answers one question for DESIGN §6's quality goal: how well
does the simplest two-tower do on the same split, scored by the same code, when nothing
of §5's user tower (attention, rating feature, window of L ratings) or movie tower
(content features) is in the way?

* User tower: the L2-normalized binary bag of *every* input rating, times an id
  embedding table, times a square matrix (``--interests K``: K matrices, K user
  vectors). Movie tower: a free id embedding. Cosine scores divided by a temperature,
  plus an optional learned per-movie bias.
* Training (Liang et al. 2018, Mult-DAE): each epoch every training user is one row;
  half of the row's ratings are dropped from the input at random, and the row must
  score each of its positives (ratings >= 4, up to --targets-per-row sampled) above the
  negatives. Negatives are either the batch's other targets with the log-Q correction
  and accidental-hit removal (``--loss in_batch``, as DESIGN §5's TFRS task) or every
  movie (``--loss catalog``, Mult-DAE's multinomial).
* It trains on the temporal protocol's fit data (every training user's history minus
  their last rating, the temporal target, which the product's training never sees
  either), and picks the epoch by validation Recall@20, checked every --every epochs.
* Scored with ``jobs/evaluate.py``'s own ``rank`` and ``protocol_metrics``: the
  held-out validation and test users (Recall@20) and the temporal protocol (HR@10).
  With ``--random-split`` a second model is trained on the random split's 80% (as the
  evaluation retrains the two-tower model) and scored on its top-10 / top-100 accuracy,
  its epoch also picked by validation Recall@20.

    python benchmarks/linear_reference.py --preprocess-root /tmp/q --loss in_batch --seed 0

``--preprocess-root`` is a root holding a preprocess run of ml-latest-small (for example
the one ``bench_train.py --quality-small --preprocess-root DIR`` makes). Prints one line
per checked epoch and a final JSON line. About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from measure import REPO, machine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preprocess-root", required=True,
                   help="artifact root holding a preprocess run of ml-latest-small")
    p.add_argument("--loss", choices=("in_batch", "catalog"), default="in_batch")
    p.add_argument("--dim", type=int, default=64, help="embedding dimension (64)")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--every", type=int, default=10,
                   help="score validation every this many epochs (10)")
    p.add_argument("--dropout", type=float, default=0.5,
                   help="share of a row's input ratings dropped (0.5)")
    p.add_argument("--learning-rate", type=float, default=0.003)
    p.add_argument("--batch-size", type=int, default=64, help="users per batch (64)")
    p.add_argument("--targets-per-row", type=int, default=32,
                   help="in_batch: positives sampled per row (32)")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--movie-bias", action="store_true", help="learned per-movie score bias")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", choices=("all", "hidden"), default="all",
                   help="a row's targets: all its positives, shown ones included (Mult-DAE, "
                        "default), or only those its dropout hid (the product's held_out_set)")
    p.add_argument("--rating-bag", action="store_true",
                   help="add a second bag: each input's user-mean-centred rating times a "
                        "second movie embedding (the rating feature of DESIGN §5, linearly)")
    p.add_argument("--interests", type=int, default=1,
                   help="user vectors per user, each its own square matrix over the bag; a "
                        "movie's score is the log-mean-exp of its K scores (a soft maximum, "
                        "as multi-interest retrieval; 1 = the plain linear tower)")
    p.add_argument("--gramian", type=float, default=0.0,
                   help="weight of a penalty on each row's mean squared score (cosine) "
                        "against every movie, as iALS's unobserved term (Krichene et al. "
                        "2019's Gramian regulariser); 0 = off")
    p.add_argument("--random-split", action="store_true",
                   help="also train a second model on the random split's 80%% and report "
                        "its top-10 / top-100 accuracy (as jobs/evaluate.py retrains)")
    args = p.parse_args(argv)
    if not 0.0 <= args.dropout < 1.0:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.every < 1 or args.epochs < 1 or args.interests < 1:
        p.error("--epochs, --every and --interests must be >= 1")
    if args.gramian < 0:
        p.error(f"--gramian must be >= 0, got {args.gramian}")
    return args


def fit_and_check(args: argparse.Namespace, fit, checks, n: int, t0: float) -> dict:
    """Train on ``fit``; every --every epochs rank each protocol of ``checks`` (protocol,
    {reported name: metric}) once and report its metrics; return the best check by
    validation Recall@20 and all checks."""
    import numpy as np
    import tensorflow as tf

    from recsys.evaluation.evaluate import most_rated, protocol_metrics, rank
    from recsys.evaluation.models import _binary
    from recsys.evaluation.protocols import Interactions

    tf.keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    def centred(inter: Interactions, rows: slice | None = None) -> np.ndarray:
        """Each input rating minus its user's mean rating, as a dense [users, n] matrix."""
        rows = rows or slice(0, inter.users)
        part = inter.subset(np.arange(rows.start, rows.stop))
        owner = part.owners()
        mean = np.bincount(owner, part.ratings, part.users) / np.maximum(np.diff(part.offsets), 1)
        x = np.zeros((part.users, n), np.float32)
        x[owner, part.columns] = part.ratings - mean[owner]
        return x

    inputs = _binary(fit, n)
    ratings = centred(fit) if args.rating_bag else None
    positives = _binary(fit.subset(np.arange(fit.users), fit.ratings >= 4.0), n)
    counts = positives.sum(0) + 1.0
    log_q = tf.constant(np.log(counts / counts.sum()).astype(np.float32))
    init = tf.random_normal_initializer(stddev=0.05)
    e_in, e_out = tf.Variable(init([n, args.dim])), tf.Variable(init([n, args.dim]))
    interests = args.interests
    w = tf.eye(args.dim)[None]  # [K, dim, dim]; K > 1: perturbed so the K vectors differ
    if interests > 1:
        w += tf.random.normal([interests, args.dim, args.dim], stddev=0.1)
    w = tf.Variable(w)
    bias = tf.Variable(tf.zeros([n]))
    variables = [e_in, w, e_out] + ([bias] if args.movie_bias else [])
    if args.rating_bag:
        e_rating = tf.Variable(tf.zeros([n, args.dim]))
        variables.append(e_rating)
    opt = tf.keras.optimizers.Adam(args.learning_rate)
    k = args.targets_per_row

    def users(x, r=None):
        """r: the centred-rating bag (--rating-bag), else None."""
        scale = tf.maximum(tf.norm(x, axis=1, keepdims=True), 1e-12)
        bag = x @ e_in if r is None else x @ e_in + r @ e_rating
        return tf.math.l2_normalize(tf.einsum("bd,kde->bke", bag / scale, w), axis=2)

    def combine(s):
        """[B, K, N] scores of each user vector -> [B, N] (log-mean-exp over the K)."""
        if interests == 1:
            return s[:, 0]
        return tf.reduce_logsumexp(s, axis=1) - float(np.log(interests))

    def scores(u, v):
        """User vectors [B, K, D] x movie vectors [N, D] -> [B, N], before the movie bias."""
        return combine(tf.einsum("bkd,nd->bkn", u, v) / args.temperature)

    def catalog_scores(u):
        return scores(u, tf.math.l2_normalize(e_out, axis=1))

    def with_bias(s):
        return s + bias if args.movie_bias else s

    @tf.function
    def step(x, r, pos):
        with tf.GradientTape() as tape:
            keep = tf.cast(tf.random.uniform(tf.shape(x)) >= args.dropout, tf.float32)
            u = users(x * keep, None if r is None else r * keep)
            if args.targets == "hidden":  # only what the row's input hides, as held_out_set
                pos = pos * (1.0 - keep)
            rows = tf.cast(tf.shape(x)[0], tf.float32)
            full = catalog_scores(u) if args.loss == "catalog" or args.gramian else None
            if args.loss == "catalog":
                loss = -tf.reduce_sum(tf.nn.log_softmax(with_bias(full)) * pos) / rows
            else:
                draw = tf.where(pos > 0, tf.random.uniform(tf.shape(pos)), -1.0)
                value, col = tf.math.top_k(draw, k)  # up to k random positives per row
                ok = value >= 0
                row = tf.boolean_mask(tf.repeat(tf.range(tf.shape(x)[0])[:, None], k, 1), ok)
                col = tf.boolean_mask(col, ok)
                v = tf.math.l2_normalize(tf.gather(e_out, col), axis=1)
                s = scores(tf.gather(u, row), v)
                if args.movie_bias:
                    s += tf.gather(bias, col)[None, :]
                s -= tf.gather(log_q, col)[None, :]  # log-Q correction
                hit = tf.equal(col[:, None], col[None, :]) & ~tf.eye(tf.size(col), dtype=tf.bool)
                s = tf.where(hit, -1e9, s)  # accidental hits
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    tf.range(tf.size(col)), s)) / rows
            if args.gramian:  # every movie's score pushed towards 0, as iALS's unobserved term
                cosine = full * args.temperature
                loss += args.gramian * tf.reduce_sum(tf.reduce_mean(tf.square(cosine), 1)) / rows
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

    class Scorer:
        def scores(self, query: Interactions, rows: slice) -> np.ndarray:
            r = centred(query, rows) if args.rating_bag else None
            return with_bias(catalog_scores(users(_binary(query, n, rows), r))).numpy()

    best, done = None, []
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(inputs.shape[0])
        for start in range(0, order.size, args.batch_size):
            idx = order[start:start + args.batch_size]
            step(inputs[idx], None if ratings is None else ratings[idx], positives[idx])
        if epoch % args.every and epoch != args.epochs:
            continue
        figures = {}
        for p, wanted in checks:
            _, popular = most_rated(p, n)
            metrics = protocol_metrics(p, rank(Scorer(), p, n), popular, n)
            figures.update({name: round(metrics[key], 4) for name, key in wanted.items()})
        done.append({"epoch": epoch, **figures})
        print(f"epoch {epoch:4d}  " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items())
              + f"  ({time.time() - t0:.0f} s)", flush=True)
        if best is None or figures["validation_recall@20"] > best["validation_recall@20"]:
            best = done[-1]
    return {"best_by_validation": best, "checks": done}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    sys.path.insert(0, str(REPO))
    from recsys import artifacts
    from recsys.config import config_from_dict
    from recsys.evaluation.protocols import (TEST, VALIDATION, held_out_users, load_corpus,
                                             random_split, temporal)

    try:
        pre = artifacts.resolve(args.preprocess_root, "preprocess", None)
    except artifacts.ArtifactError as err:
        raise SystemExit(f"linear_reference.py: {err} (for example: python "
                         "benchmarks/bench_train.py --quality-small --preprocess-root DIR)")
    corpus = load_corpus(pre)
    n = corpus.n_movies
    validation = (held_out_users(corpus, VALIDATION), {"validation_recall@20": "recall@20"})
    temporal_protocol = temporal(corpus)
    # Main run: the temporal protocol's fit data (training users minus each one's last
    # rating, the temporal target, which the product's training never sees either).
    runs = {"main": (temporal_protocol.fit, [
        validation, (held_out_users(corpus, TEST), {"test_recall@20": "recall@20"}),
        (temporal_protocol, {"temporal_hr@10": "hr@10"})])}
    if args.random_split:
        # As jobs/evaluate.py retrains the two-tower model: on the random split's 80%.
        preprocess_config = config_from_dict(artifacts.read_manifest(pre)["config"])
        split = random_split(corpus, seed=preprocess_config.split.seed)
        runs["random_split"] = (split.fit, [validation, (split, {
            "random_top10_accuracy": "top10_accuracy",
            "random_top100_accuracy": "top100_accuracy"})])
    t0 = time.time()
    report = {name: fit_and_check(args, fit, checks, n, t0) for name, (fit, checks) in runs.items()}
    print(json.dumps({"args": vars(args), **report, "machine": machine(),
                      "seconds": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
