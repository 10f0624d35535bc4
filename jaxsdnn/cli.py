"""The ``jaxsdnn`` command line: generate, partition, infer, train.

Device setup (simulated CPU devices, ``jax.distributed``) happens here, before JAX starts its
backend, never at import of the library. Errors in the input become one line on stderr and exit
status 2; ``--json`` makes the last line of stdout one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main"]


class UsageError(ValueError):
    """A problem with the command line itself."""


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------
def _add_device_args(p: argparse.ArgumentParser, parallel: bool = True) -> None:
    g = p.add_argument_group("devices")
    g.add_argument("--devices", type=_positive_int, default=None, help="devices on the model axis (neuron partition); "
                   "simulated CPU devices when no accelerator is present")
    if parallel:
        g.add_argument("--data-parallel", type=_positive_int, default=1, help="devices on the data (batch) axis")
    g.add_argument("--coordinator", default=None,
                   help="HOST:PORT of process 0 for multi-host runs (env JAXSDNN_COORDINATOR)")
    g.add_argument("--num-processes", type=_positive_int, default=None,
                   help="processes in a multi-host run (env JAXSDNN_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None,
                   help="this process's id in [0, num-processes) (env JAXSDNN_PROCESS_ID)")
    g.add_argument("--init-timeout", type=int, default=60,
                   help="seconds to wait for the other processes / the coordinator (default 60)")


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"environment variable {name}={v!r} is not an integer") from None


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """Fails with a clear message if nothing listens at ``address`` within ``timeout`` seconds.

    The distributed runtime aborts the whole process (no exception) when it cannot reach the
    coordinator, so the other processes probe it first.
    """
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--coordinator {address!r}: expected HOST:PORT")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UsageError(
                    f"could not reach the coordinator at {address} within {timeout:g} s ({e.strerror or e}); "
                    "is process 0 running and the address right?"
                ) from None
            time.sleep(0.25)


def _setup_devices(args, needed: int):
    """Initialises JAX for ``needed`` devices; returns the device list to build the mesh from."""
    import jax

    args.coordinator = args.coordinator or os.environ.get("JAXSDNN_COORDINATOR")
    if args.num_processes is None:
        args.num_processes = _env_int("JAXSDNN_NUM_PROCESSES")
    if args.process_id is None:
        args.process_id = _env_int("JAXSDNN_PROCESS_ID")
    multi = args.coordinator or args.num_processes or args.process_id is not None
    if multi:
        if not (args.coordinator and args.num_processes and args.process_id is not None):
            raise UsageError("multi-host runs need --coordinator, --num-processes and --process-id together")
        if not 0 <= args.process_id < args.num_processes:
            raise UsageError(f"--process-id {args.process_id} is not in [0, {args.num_processes})")
        if needed % args.num_processes:
            raise UsageError(f"{needed} devices cannot be split evenly over {args.num_processes} processes")
        local = needed // args.num_processes
        if args.process_id != 0:
            _wait_for_coordinator(args.coordinator, args.init_timeout)
        jax.config.update("jax_num_cpu_devices", local)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize(
                args.coordinator,
                args.num_processes,
                args.process_id,
                initialization_timeout=args.init_timeout,
            )
        except Exception as e:  # the runtime raises plain RuntimeError / XlaRuntimeError
            raise UsageError(
                f"could not join the multi-host run at {args.coordinator} as process {args.process_id} of "
                f"{args.num_processes} within {args.init_timeout} s: {str(e).splitlines()[0][:300]}"
            ) from None
    else:
        try:
            jax.config.update("jax_num_cpu_devices", max(1, needed))
        except RuntimeError:
            pass  # backend already started (library use, tests): use the devices it has
    devices = jax.devices()
    if len(devices) < needed:
        devices = jax.devices("cpu")
    if len(devices) < needed:
        raise UsageError(f"{needed} devices requested, {len(devices)} available")
    return devices[:needed]


def _same_on_every_process(part):
    """Multi-host: every process uses process 0's partition (the partitioners are seeded, but a
    mismatch would be silently wrong)."""
    import jax

    if jax.process_count() == 1:
        return part
    import dataclasses

    import numpy as np
    from jax.experimental import multihost_utils

    parts = tuple(np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(p, np.int32))) for p in part.parts)
    return dataclasses.replace(part, parts=parts)


def _is_writer() -> bool:
    import jax

    return jax.process_index() == 0


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
def _cmd_generate(args) -> dict:
    from jaxsdnn import io, radixnet

    if args.images < 0:
        raise UsageError(f"--images {args.images}: expected a count >= 0")
    if not 0.0 <= args.density <= 1.0:
        raise UsageError(f"--density {args.density}: expected a fraction in [0, 1]")
    try:
        bias = args.bias if args.bias is not None else io.graphchallenge_bias(args.neurons)
    except ValueError:
        bias = None
    if args.images and args.survivors and bias is None:
        raise UsageError(f"--neurons {args.neurons} has no Graph Challenge bias: give --bias B to count the "
                         "survivors, or --no-survivors")
    net = radixnet.radixnet(args.neurons, args.layers, seed=args.seed, bias=0.0)  # files hold no bias
    written = io.write_network(net, args.out)
    out = {"network": str(args.out), "layers": net.num_layers, "neurons": args.neurons, "nnz": net.total_nnz,
           "files": len(written)}
    if args.images:
        if args.image_kind == "challenge":
            imgs = radixnet.challenge_images(args.neurons, args.images, seed=args.seed)
        else:
            imgs = radixnet.random_images(args.neurons, args.images, args.density, seed=args.seed)
        path = os.path.join(args.out, f"sparse-images-{args.neurons}.tsv")
        io.write_images(path, imgs)
        out.update(images=args.images, images_file=path, image_kind=args.image_kind)
        if args.survivors:  # run the network once: how many images reach the last layer
            from jaxsdnn import engine

            result = engine.run_inference(radixnet.radixnet(args.neurons, args.layers, seed=args.seed, bias=bias), imgs)
            truth = os.path.join(args.out, f"neuron{args.neurons}-l{args.layers}-categories.tsv")
            io.write_categories(truth, result.categories)
            out.update(survivors=int(result.categories.size), survivor_fraction=result.categories.size / args.images,
                       bias=bias, categories_file=truth)
            print(f"{result.categories.size} of {args.images} images survive all {args.layers} layers "
                  f"(bias {bias:g}) -> {truth}", file=sys.stderr)
    print(f"wrote {net.num_layers} layers of {args.neurons} neurons to {args.out}", file=sys.stderr)
    return out


def _read_network(args):
    from jaxsdnn import io

    return io.read_network(args.network, num_layers=args.layers, bias=args.bias)


def _cmd_partition(args) -> dict:
    from jaxsdnn import metrics, partition

    net = _read_network(args)
    t0 = time.perf_counter()
    part = partition.partition_network(net, args.parts, method=args.method, epsilon=args.epsilon,
                                       seed=args.seed, threads=args.threads)
    seconds = time.perf_counter() - t0
    partition.save_partition(args.out, part)
    m = metrics.partition_metrics(net, part)
    print(f"{args.method} partition into {args.parts} parts: volume {m['volume']}, worst layer imbalance "
          f"{m['max_imbalance']:.4f}, {seconds:.1f} s -> {args.out}", file=sys.stderr)
    return {"volume": int(m["volume"]), "per_layer_volume": [int(v) for v in m["per_layer_volume"]],
            "max_imbalance": float(m["max_imbalance"]), "seconds": seconds, "parts": args.parts,
            "method": args.method, "out": str(args.out)}


def _check_output(path: str, flag: str) -> None:
    """Fails before any work if ``path`` cannot be written (names the flag and the path)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory, expected a file path")
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: folder {parent} is not writable")


def _enable_compile_cache(where: str | None) -> str | None:
    """JAX's persistent compilation cache in ``where`` (default ``$JAXSDNN_COMPILE_CACHE`` or
    ``~/.cache/jaxsdnn/xla``; ``off`` disables it): a second run of the same shapes loads its
    programs instead of compiling them."""
    import jax

    where = where or os.environ.get("JAXSDNN_COMPILE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "jaxsdnn", "xla")
    if where == "off":
        return None
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--compile-cache {where}: cannot create it ({e.strerror})") from None
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return where


def _write_scores(path: str, scores) -> None:
    """Survivors' last-layer activations, sparse: ``.npz`` is ``scipy.sparse.save_npz`` of the
    ``[images, n_L]`` CSR matrix; any other name gets ``image<TAB>neuron<TAB>value`` lines
    (1-based, survivors only, sorted), the Graph Challenge's triplet layout."""
    import numpy as np
    import scipy.sparse as sp

    from jaxsdnn._atomic import atomic_write

    if path.endswith(".npz"):
        with atomic_write(path, "wb") as f:
            sp.save_npz(f, sp.csr_matrix(scores), compressed=True)
        return
    coo = sp.coo_array(scores)
    order = np.lexsort((coo.col, coo.row))
    with atomic_write(path, "w") as f:
        for r, c, v in zip(coo.row[order] + 1, coo.col[order] + 1, coo.data[order]):
            f.write(f"{r}\t{c}\t{v:.9g}\n")


def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _cmd_infer(args) -> dict:
    import numpy as np

    if args.partition and args.method:
        raise UsageError("give either --partition FILE or --method M, not both")
    if args.method and (args.devices or 1) < 2:
        raise UsageError("--method partitions the network over --devices; give --devices 2 or more")
    _check_output(args.out, "--out")
    if args.scores:
        _check_output(args.scores, "--scores")
    if args.truth and not os.path.isfile(args.truth):
        raise UsageError(f"--truth {args.truth}: no such file")
    model = args.devices or 1
    from jaxsdnn import partition

    part = None
    if args.partition:  # read before JAX starts: its part count sets the device count
        part = partition.load_partition(args.partition)
        if args.devices is None:
            model = part.num_parts
    if args.data_parallel < 1 or model < 1:
        raise UsageError("--devices and --data-parallel must be >= 1")
    devices = _setup_devices(args, model * args.data_parallel)
    cache = _enable_compile_cache(args.compile_cache)

    from jaxsdnn import engine, io, sharded

    net = _read_network(args)
    images = io.read_images(args.images, num_features=net.sizes[0])
    truth = io.read_categories(args.truth) if args.truth else None
    if part is not None:
        try:
            part.validate_for(net)
        except ValueError as e:
            raise ValueError(f"{args.partition}: {e}") from None
        if part.num_parts != model:
            raise UsageError(f"{args.partition} has {part.num_parts} parts but --devices is {model}")
    elif model > 1:
        part = partition.partition_network(net, model, method=args.method or "kahypar", seed=args.seed)
        part = _same_on_every_process(part)
    mesh = sharded.make_mesh(model, args.data_parallel, devices=devices)
    result = engine.run_inference(net, images, partition=part, mesh=mesh, batch_size=args.batch_size,
                                  compact=not args.no_compact)
    if _is_writer():
        io.write_categories(args.out, result.categories)
        if args.scores:
            _write_scores(args.scores, result.scores)
    stats = result.stats
    out = {
        "categories": int(result.categories.size),
        "seconds": result.seconds,
        "compile_seconds": result.compile_seconds,
        "edges_per_second": result.edges_per_second,
        "layers": net.num_layers,
        "images": int(images.shape[0]),
        "devices": model * args.data_parallel,
        "model_parallel": model,
        "data_parallel": args.data_parallel,
        "batch_size": stats["batch_size"],
        "volume_per_sample": stats["volume_per_sample"],
        "padded_volume_per_sample": stats["padded_volume_per_sample"],
        "rounds": stats["rounds"],
        "segments": stats["segments"],
        "compact": stats["compact"],
        "survival": [[int(k), int(a)] for k, a in result.survival],
        "computed_edge_fraction": stats["computed_edge_fraction"],
        "skipped_edge_fraction": max(0.0, 1.0 - stats["computed_edge_fraction"]),
        "compiles": stats["compiles"],
        "compile_cache_hits": stats["cache_hits"],
        "compile_cache": cache,
        "peak_rss_bytes": _peak_rss_bytes(),
        "out": str(args.out),
    }
    if truth is not None:
        out["matches_truth"] = bool(np.array_equal(truth, result.categories))
    print(f"{out['categories']} categories from {out['images']} images through {out['layers']} layers on "
          f"{out['devices']} device(s): {result.seconds:.3f} s, {result.edges_per_second:.3g} edges/s"
          + (f", {out['skipped_edge_fraction']:.1%} of the edges skipped (dead samples)" if stats["compact"] else "")
          + (f", matches truth: {out['matches_truth']}" if truth is not None else ""), file=sys.stderr)
    if truth is not None and not out["matches_truth"]:
        out["_exit"] = 1
    return out


def _cmd_train(args) -> dict:
    from jaxsdnn import config as config_lib

    cfg = config_lib.load_config(args.config, args.set or [])
    model = args.devices or config_lib.get(cfg, "devices")
    data = args.data_parallel or config_lib.get(cfg, "data_parallel")
    devices = _setup_devices(args, model * data)
    from jaxsdnn import train

    run_dir = args.run_dir or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    return train.train(cfg, run_dir, resume=args.resume, devices=devices, model_parallel=model,
                       data_parallel=data, method=args.method, progress=not args.json)


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------
def _positive_int(v: str) -> int:
    i = int(v)
    if i < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return i


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxsdnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write a RadiX-Net in the Graph Challenge layout")
    g.add_argument("--neurons", type=_positive_int, required=True)
    g.add_argument("--layers", type=_positive_int, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.add_argument("--images", type=int, default=0,
                   help="also write this many input images (and, with the survivors, the truth categories)")
    g.add_argument("--image-kind", choices=["challenge", "random"], default="challenge",
                   help="challenge (default): the challenge's MNIST digits resized to sqrt(N) x sqrt(N), so that a "
                        "small fraction survives, as in the challenge; random: uniform random binary images")
    g.add_argument("--density", type=float, default=0.1, help="density of --image-kind random")
    g.add_argument("--bias", type=float, default=None,
                   help="bias for counting the survivors (default: the challenge's bias for N)")
    g.add_argument("--no-survivors", dest="survivors", action="store_false",
                   help="do not run the network to count the images that survive it")
    g.add_argument("--json", action="store_true")

    def network_args(p):
        p.add_argument("--network", required=True, help="directory of n{N}-l{k}.tsv[.gz] files")
        p.add_argument("--layers", type=_positive_int, default=None, help="use only the first L layers")
        p.add_argument("--bias", type=float, default=None, help="bias of every neuron (default: by N)")

    pa = sub.add_parser("partition", help="partition the neurons of every layer over devices")
    network_args(pa)
    pa.add_argument("--parts", type=int, required=True)
    pa.add_argument("--method", default="kahypar", choices=["block", "random", "kahypar", "mtkahypar"])
    pa.add_argument("--epsilon", type=float, default=0.03)
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--threads", type=_positive_int, default=1, help="Mt-KaHyPar threads")
    pa.add_argument("--out", required=True)
    pa.add_argument("--json", action="store_true")

    i = sub.add_parser("infer", help="run inference and write the categories")
    network_args(i)
    i.add_argument("--images", required=True, help="images .tsv[.gz] or .mtx")
    i.add_argument("--out", required=True, help="categories file to write")
    i.add_argument("--batch-size", type=_positive_int, default=None)
    i.add_argument("--scores", default=None,
                   help="save the survivors' last-layer activations, sparse: FILE.npz (scipy.sparse.save_npz of "
                        "the [images, n_L] CSR matrix) or any other name for image<TAB>neuron<TAB>value lines "
                        "(1-based, survivors only)")
    i.add_argument("--no-compact", action="store_true",
                   help="compute every sample through every layer (no dropping of dead samples; for comparison)")
    i.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="persistent compilation cache (default $JAXSDNN_COMPILE_CACHE or ~/.cache/jaxsdnn/xla; "
                        "'off' disables it)")
    i.add_argument("--truth", default=None, help="categories file to compare with (exit 1 on mismatch)")
    i.add_argument("--method", default=None, choices=["block", "random", "kahypar", "mtkahypar"],
                   help="partitioner when --devices > 1 (default kahypar)")
    i.add_argument("--partition", default=None, help="a partition .npz from `jaxsdnn partition`")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--json", action="store_true")
    _add_device_args(i)

    t = sub.add_parser("train", help="train a sparse network from a config")
    t.add_argument("--config", required=True)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    t.add_argument("--run-dir", default=None, help="where metrics and checkpoints go (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --run-dir")
    t.add_argument("--method", default=None, choices=["block", "random", "kahypar", "mtkahypar"])
    t.add_argument("--json", action="store_true")
    _add_device_args(t)
    t.set_defaults(data_parallel=None)
    return parser


COMMANDS = {"generate": _cmd_generate, "partition": _cmd_partition, "infer": _cmd_infer, "train": _cmd_train}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = COMMANDS[args.command](args)
    except (ValueError, OSError) as e:
        msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"jaxsdnn {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the XLA runtime (out of memory, a lost peer): one line, not a traceback
        print(f"jaxsdnn {args.command}: runtime error: {str(e).splitlines()[0][:500]}", file=sys.stderr)
        return 1
    code = int(out.pop("_exit", 0)) if isinstance(out, dict) else 0
    if getattr(args, "json", False) and isinstance(out, dict):
        print(json.dumps(out))
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
