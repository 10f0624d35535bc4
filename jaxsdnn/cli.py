"""The ``jaxsdnn`` command line: generate, partition, infer, train.

Device setup (simulated CPU devices, ``jax.distributed``) happens here, before JAX starts its
backend, never at import of the library. Every argument, input and output location is checked
before any work; outputs never replace an input, each other or a non-regular file. Errors become
one line on stderr: exit status 2 for bad input, 1 for the runtime, 130 for Ctrl-C; ``--json``
makes the last line of stdout one strict-JSON object.

Multi-host (``--coordinator``): before the distributed runtime starts, every process checks in
with process 0 on the coordinator port (a rendezvous with its own deadline, ``--init-timeout``),
which refuses a missing peer, a taken port, or processes whose network, images or partition
differ; the command itself runs in a child process, so that the runtime's native abort (a peer
that dies mid-run) still ends in one line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time

__all__ = ["main"]


from jaxsdnn._multihost import UsageError, host_rendezvous, peer_rendezvous, split_address, supervise, wants_supervisor


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
    g.add_argument("--init-timeout", type=_positive_seconds, default=60.0,
                   help="seconds to wait for the other processes / the coordinator (default 60)")


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"environment variable {name}={v!r} is not an integer") from None


def _positive_seconds(v: str) -> float:
    try:
        t = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {v!r}") from None
    if not (t > 0 and math.isfinite(t)) or t > 86400:
        raise argparse.ArgumentTypeError(f"expected a number of seconds in (0, 86400], got {v}")
    return t


def _setup_devices(args, needed: int, facts: dict | None = None):
    """Initialises JAX for ``needed`` devices; returns the device list to build the mesh from.

    Multi-host: ``facts`` (a dict of JSON values, or a function returning one) must be equal on
    every process, else every process fails.
    """
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
        split_address(args.coordinator)
        local = needed // args.num_processes
        facts = dict((facts() if callable(facts) else facts) or {}, devices=needed)
        if args.process_id == 0:
            host_rendezvous(args.coordinator, args.num_processes, facts, args.init_timeout)
        else:
            peer_rendezvous(args.coordinator, args.process_id, args.num_processes, facts, args.init_timeout)
        jax.config.update("jax_num_cpu_devices", local)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            seconds = max(1, math.ceil(args.init_timeout))
            jax.distributed.initialize(
                args.coordinator,
                args.num_processes,
                args.process_id,
                initialization_timeout=seconds,
                heartbeat_timeout_seconds=max(10, seconds),  # a peer that died is noticed within this
                shutdown_timeout_seconds=max(10, seconds),  # and the exit does not wait longer for it
            )
            _STATE["distributed"] = True
            print(f"joined the multi-host run at {args.coordinator} as process {args.process_id} of "
                  f"{args.num_processes}", file=sys.stderr, flush=True)
        except Exception as e:  # the runtime raises plain RuntimeError / XlaRuntimeError
            raise UsageError(
                f"could not join the multi-host run at {args.coordinator} as process {args.process_id} of "
                f"{args.num_processes} within {args.init_timeout:g} s: {str(e).splitlines()[0][:300]}"
            ) from None
        # The runtime's preemption notifier takes SIGTERM (the process would then ignore it): give it back.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
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


def _digest(*arrays) -> str:
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _is_writer() -> bool:
    import jax

    return jax.process_index() == 0


# ----------------------------------------------------------------------------------------------
# checks before the work
# ----------------------------------------------------------------------------------------------
def _kind(path: str) -> str | None:
    """What is at ``path`` when it exists and is not a regular file ("a directory", "a FIFO", ...)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) else "not a regular file"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _check_outputs(outputs: dict, inputs: dict) -> None:
    """Refuses, before any work, an output that is not a writable regular-file location, or that is
    an input or another output. An output that is a symlink is written through: its target gets
    the new content (see :func:`jaxsdnn._atomic.atomic_write`).

    Args:
        outputs: flag -> the path the user gave (None: not written).
        inputs: flag -> a path, or a list of paths (the layer files of ``--network``), or None.
    """
    import tempfile

    outputs = {flag: os.fspath(path) for flag, path in outputs.items() if path is not None}
    flat = [(flag, os.fspath(p)) for flag, paths in inputs.items() if paths is not None
            for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    for i, (flag, path) in enumerate(outputs.items()):
        if path == "" or path.endswith(os.sep):
            raise UsageError(f"{flag} {path!r}: expected a file name")
        what = _kind(path)
        if what is not None:
            raise UsageError(f"{flag} {path}: is {what}, not a regular file; refusing to replace it")
        if os.path.islink(path) and not os.path.exists(path):
            raise UsageError(f"{flag} {path}: is a symlink to {os.readlink(path)!r}, which does not exist")
        for in_flag, in_path in flat:
            if _same_file(path, in_path):
                shown = f"a layer file of --network ({in_path})" if in_flag == "--network" else f"{in_flag} {in_path}"
                raise UsageError(f"{flag} {path}: is the same file as {shown}; refusing to overwrite an input")
        for other_flag, other in list(outputs.items())[:i]:
            if _same_file(path, other):
                raise UsageError(f"{flag} {path}: is the same file as {other_flag} {other}; give two different files")
        directory = os.path.dirname(os.path.realpath(path))
        shown_dir = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            raise UsageError(f"{flag} {path}: directory {shown_dir} does not exist")
        try:
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".jaxsdnn-write-test-"):
                pass
        except OSError as e:
            raise UsageError(f"{flag} {path}: cannot write in {shown_dir} ({e.strerror or e})") from None


def _default_bias(args, neurons: int) -> float:
    from jaxsdnn import io

    if args.bias is not None:
        return args.bias
    try:
        return io.graphchallenge_bias(neurons)
    except ValueError:
        raise UsageError(
            f"--network {args.network}: no Graph Challenge bias for {neurons} neurons per layer (defined for "
            "1024, 4096, 16384, 65536); give --bias"
        ) from None


def _flag_words(message: str, parts_flag: str) -> str:
    """The partitioner's argument names as the CLI's flags."""
    for word, flag in (("num_parts=", f"{parts_flag} "), ("epsilon=", "--epsilon "), ("seed=", "--seed "),
                       ("threads=", "--threads ")):
        message = message.replace(word, flag)
    return message


def _network_files(args) -> list:
    """The layer files ``--network`` holds (``--layers`` checked against them), before reading any."""
    from jaxsdnn import io

    neurons, files = io.find_layer_files(args.network)
    if args.layers is not None and args.layers > len(files):
        raise UsageError(f"--layers {args.layers}: {args.network} holds {len(files)} layers (n{neurons}-l1..l{len(files)})")
    _default_bias(args, neurons)
    return files


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
def _generated_bytes(neurons: int, layers: int, images: int, density: float) -> int:
    """What ``generate`` writes, a slight overestimate: 32 edges per neuron and layer, lines
    ``row<TAB>col<TAB>6.250000e-02``; image lines ``row<TAB>col<TAB>1``."""
    digits = len(str(neurons))
    layer = neurons * 32 * (2 * digits + 15)
    image = round(density * images * neurons) * (len(str(max(images, 1))) + digits + 4)
    return layers * layer + image


def _cmd_generate(args) -> dict:
    import shutil

    from jaxsdnn import io, radixnet

    if args.images < 0:
        raise UsageError(f"--images {args.images}: expected a count >= 0")
    if not 0.0 <= args.density <= 1.0:
        raise UsageError(f"--density {args.density:g}: expected a fraction in [0, 1]")
    try:
        radixnet._block_size(args.neurons)
    except ValueError as e:
        raise UsageError(f"--neurons {args.neurons}: {e}") from None
    if args.images * args.neurons * args.density > _MAX_GENERATED_ENTRIES:
        raise UsageError(f"--images {args.images} x --neurons {args.neurons} x --density {args.density:g}: more than "
                         f"{_MAX_GENERATED_ENTRIES:.0e} image entries; generate fewer")
    out_dir = os.path.abspath(args.out)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    existing = out_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK):
        raise UsageError(f"--out {args.out}: cannot write in {existing}")
    need = _generated_bytes(args.neurons, args.layers, args.images, args.density)
    free = shutil.disk_usage(existing).free
    if need > free:
        raise UsageError(f"--out {args.out}: the network and images need about {need / 1e6:,.1f} MB but only "
                         f"{free / 1e6:,.1f} MB are free there")
    images_path = os.path.join(args.out, f"sparse-images-{args.neurons}.tsv")
    if args.images:
        _check_outputs({"--out": images_path} if os.path.isdir(out_dir) else {}, {})
    try:
        bias = args.bias if args.bias is not None else io.graphchallenge_bias(args.neurons)
    except ValueError:
        bias = None
    if args.images and args.survivors and bias is None:
        raise UsageError(f"--neurons {args.neurons} has no Graph Challenge bias: give --bias B to count the "
                         "survivors, or --no-survivors")
    net = radixnet.radixnet(args.neurons, args.layers, seed=args.seed, bias=0.0)  # files hold no bias
    if not args.images:
        imgs = None
    elif args.image_kind == "challenge":
        imgs = radixnet.challenge_images(args.neurons, args.images, seed=args.seed)
    else:
        imgs = radixnet.random_images(args.neurons, args.images, args.density, seed=args.seed)
    written = io.write_network(net, args.out)
    out = {"network": str(args.out), "layers": net.num_layers, "neurons": args.neurons, "nnz": net.total_nnz,
           "files": len(written)}
    if imgs is not None:
        io.write_images(images_path, imgs)
        out.update(images=args.images, images_file=images_path, image_kind=args.image_kind)
        if args.survivors:  # run the network once: how many images reach the last layer
            import numpy as np

            from jaxsdnn import engine
            from jaxsdnn.network import SparseNetwork

            with_bias = SparseNetwork(net.weights, tuple(np.full(b.shape, bias, np.float32) for b in net.biases), net.cap)
            result = engine.run_inference(with_bias, imgs)
            truth = os.path.join(args.out, f"neuron{args.neurons}-l{args.layers}-categories.tsv")
            io.write_categories(truth, result.categories)
            out.update(survivors=int(result.categories.size), survivor_fraction=result.categories.size / args.images,
                       bias=bias, categories_file=truth)
            print(f"{result.categories.size} of {args.images} images survive all {args.layers} layers "
                  f"(bias {bias:g}) -> {truth}", file=sys.stderr)
    print(f"wrote {net.num_layers} layers of {args.neurons} neurons to {args.out}", file=sys.stderr)
    return out


_MAX_GENERATED_ENTRIES = 2e9


def _read_network(args):
    from jaxsdnn import io

    neurons, _ = io.find_layer_files(args.network)
    return io.read_network(args.network, num_layers=args.layers, bias=_default_bias(args, neurons),
                           allow_empty=args.allow_empty_layers)


class _Progress:
    """``partition_network``'s progress as a bar on stderr: redrawn in place on a terminal, else a
    line at every tenth of a stage (logs stay short)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last = None

    def __call__(self, stage: str, done: int, total: int, volume: int) -> None:
        tenth = (stage, done * 10 // total)
        if not self.tty and tenth == self.last and done != total:
            return
        self.last = tenth
        filled = 30 * done // total
        line = (f"partition {stage:7s} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} layers, "
                f"volume so far {volume:,}, {time.perf_counter() - self.t0:.0f} s")
        self.stream.write(("\r" + line + ("\n" if done == total else "")) if self.tty else line + "\n")
        self.stream.flush()


def _peak_rss_mb() -> dict:
    """Peak resident memory of this process and of the partitioning tool's worker process."""
    import resource

    from jaxsdnn import _kahypar

    scale = 1 / 1024 if sys.platform.startswith("linux") else 1 / 2**20  # kB on Linux, bytes on macOS
    return {"self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
            "tool_worker": round(_kahypar.worker_peak_rss_mb(), 1)}


def _bounds(net, parts: int, epsilon: float) -> dict:
    """The best proven lower bound on every layer-balanced partition's volume, and the tighter
    class-preserving one where it applies (``jaxsdnn.bounds``)."""
    from jaxsdnn import bounds

    out = {"bound": int(bounds.device_chain_bound(net, parts, epsilon)), "bound_kind": "device_chain"}
    try:
        out["class_preserving_bound"] = int(bounds.class_preserving_bound(net, parts))
    except ValueError:
        out["class_preserving_bound"] = None
    return out


def _cmd_partition(args) -> dict:
    from jaxsdnn import metrics, partition_cache

    _check_outputs({"--out": args.out}, {"--network": _network_files(args)})
    net = _read_network(args)
    t0 = time.perf_counter()
    progress = _Progress() if args.progress else None
    try:
        part, hit = partition_cache.cached_partition(
            net, args.parts, method=args.method, epsilon=args.epsilon, seed=args.seed, threads=args.threads,
            cache_dir=False if args.no_cache else args.cache_dir, contract=not args.no_contract, progress=progress,
            workers=args.workers)
    except ValueError as e:
        raise ValueError(_flag_words(str(e), "--parts")) from None
    seconds = time.perf_counter() - t0
    from jaxsdnn import partition

    partition.save_partition(args.out, part)
    m = metrics.partition_metrics(net, part)
    out = {"volume": int(m["volume"]), "per_layer_volume": [int(v) for v in m["per_layer_volume"]],
           "max_imbalance": float(m["max_imbalance"]), "seconds": seconds, "parts": args.parts,
           "method": args.method, "out": str(args.out), "cache_hit": hit, "peak_rss_mb": _peak_rss_mb()}
    bound_text = ""
    if not args.no_bound and args.parts > 1:
        t1 = time.perf_counter()
        out.update(_bounds(net, args.parts, args.epsilon))
        out["bound_seconds"] = time.perf_counter() - t1
        out["gap"] = (out["volume"] / out["bound"] - 1) if out["bound"] else None
        gap = f"{100 * out['gap']:.1f} % above it" if out["gap"] is not None else "no gap (the bound is 0)"
        bound_text = f", proven lower bound {out['bound']} ({gap})"
    print(f"{args.method} partition into {args.parts} parts: volume {m['volume']}{bound_text}, worst layer "
          f"imbalance {m['max_imbalance']:.4f}, {seconds:.1f} s{' (cached)' if hit else ''} -> {args.out}",
          file=sys.stderr)
    return out


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
    table = np.column_stack([coo.row[order] + 1, coo.col[order] + 1, coo.data[order]])
    with atomic_write(path, "w") as f:
        np.savetxt(f, table, fmt=["%d", "%d", "%.9g"], delimiter="\t")


def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _cmd_infer(args) -> dict:
    import numpy as np

    if args.partition and args.method:
        raise UsageError("give either --partition FILE or --method M, not both")
    if args.method and (args.devices or 1) < 2:
        raise UsageError("--method partitions the network over --devices; give --devices 2 or more")
    model = args.devices or 1
    from jaxsdnn import io, partition

    # Everything is read and checked before JAX starts and before anything is written.
    _check_outputs({"--out": args.out, "--scores": args.scores},
                   {"--network": _network_files(args), "--images": args.images, "--truth": args.truth,
                    "--partition": args.partition})
    part = None
    if args.partition:  # its part count sets the device count
        part = partition.load_partition(args.partition)
        if args.devices is None:
            model = part.num_parts
    if args.data_parallel < 1 or model < 1:
        raise UsageError("--devices and --data-parallel must be >= 1")
    truth = io.read_categories(args.truth) if args.truth else None
    net = _read_network(args)
    images = io.read_images(args.images, num_features=net.sizes[0])
    if part is not None:
        try:
            part.validate_for(net)
        except ValueError as e:
            raise ValueError(f"{args.partition}: {e}") from None
        if part.num_parts != model:
            raise UsageError(f"{args.partition} has {part.num_parts} parts but --devices is {model}")
    elif model > 1:
        try:
            from jaxsdnn import partition_cache

            part, _ = partition_cache.cached_partition(net, model, method=args.method or "kahypar", seed=args.seed)
        except ValueError as e:
            raise ValueError(_flag_words(str(e), "--devices")) from None
    def facts() -> dict:  # multi-host: every process must agree on these before the first collective
        return {
            "network": net.fingerprint()[:16], "values": _digest(*(w.data for w in net.weights), *net.biases),
            "images": int(images.shape[0]), "images_digest": _digest(images.indptr, images.indices, images.data),
            "partition": None if part is None else _digest(*part.parts), "batch_size": args.batch_size, "exchange_dtype": args.exchange_dtype,
            "overlap": args.overlap, "repeats": args.repeats, "data_parallel": args.data_parallel, "compact": not args.no_compact,
            "tail": args.tail,
        }

    devices = _setup_devices(args, model * args.data_parallel, facts)
    cache = _enable_compile_cache(args.compile_cache)

    from jaxsdnn import engine, sharded

    mesh = sharded.make_mesh(model, args.data_parallel, devices=devices)
    result = engine.run_inference(net, images, partition=part, mesh=mesh, batch_size=args.batch_size,
                                  compact=not args.no_compact, exchange_dtype=args.exchange_dtype,
                                  overlap=args.overlap, repeats=args.repeats,
                                  tail=None if args.tail == "auto" else args.tail)
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
        "overlap": stats["overlap"],
        "tail": stats["tail"],
        "tail_samples": stats["tail_samples"],
        "repeats": args.repeats,
        "exchange_rounds_run": stats["exchange_rounds_run"],
        "exchanged_entries": stats["exchanged_entries"],
        "device_calls": stats["device_calls"],
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
    from jaxsdnn.train import checkpoint_state

    if args.config and args.config_file and args.config != args.config_file:
        raise UsageError(f"two configs given: {args.config_file} and --config {args.config}; give one")
    config = args.config or args.config_file
    if not config:
        raise UsageError("give the configuration file: jaxsdnn train CONFIG.yaml (or --config CONFIG.yaml)")
    cfg = config_lib.load_config(config, args.set or [])
    model = args.devices or config_lib.get(cfg, "devices")
    data = args.data_parallel or config_lib.get(cfg, "data_parallel")
    run_dir = args.run_dir or os.path.join("runs", os.path.splitext(os.path.basename(config))[0])
    latest, old = checkpoint_state(run_dir)  # off the file system: JAX starts in _setup_devices
    if args.resume and latest is None:
        raise UsageError(f"--resume: {run_dir} holds no checkpoint to resume from (checkpoints/<step>)"
                         + (f"; {old.name} is of the earlier .npz format, which train no longer resumes"
                            if old is not None else ""))
    if not args.resume and (latest is not None or old is not None):
        raise UsageError(f"--run-dir {run_dir} already holds checkpoints "
                         f"({'step ' + str(latest) if latest is not None else old.name}); give --resume to "
                         "continue that run, or another --run-dir")
    facts = {"config": _digest(json.dumps(config_lib.config_to_dict(cfg), sort_keys=True).encode()),
             "resume": bool(args.resume), "data_parallel": data}
    devices = _setup_devices(args, model * data, facts)
    from jaxsdnn import train

    return train.train(cfg, run_dir, resume=args.resume, devices=devices, model_parallel=model,
                       data_parallel=data, method=args.method, progress=not args.json)


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------
_MAX_SEED = 2**31 - 1


def _int_in(low: int, high: int | None = None, what: str = "an integer"):
    """An argparse type: an integer in ``[low, high]``."""

    def parse(v: str) -> int:
        try:
            i = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v!r}") from None
        if i < low or (high is not None and i > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {v}")
        return i

    parse.__name__ = what
    return parse


_positive_int = _int_in(1)
_seed = _int_in(0, _MAX_SEED, "a seed")


def _finite_float32(v: str) -> float:
    import numpy as np

    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not (math.isfinite(x) and abs(x) <= float(np.finfo(np.float32).max)):
        raise argparse.ArgumentTypeError(f"expected a finite float32 number (|x| <= 3.4e38), got {v}")
    return x


def _float(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {v}")
    return x


class _Parser(argparse.ArgumentParser):
    """Usage errors become a :class:`UsageError` (one line from :func:`main`), not usage text and exit."""

    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxsdnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write a RadiX-Net in the Graph Challenge layout")
    g.add_argument("--neurons", type=_positive_int, required=True)
    g.add_argument("--layers", type=_positive_int, required=True)
    g.add_argument("--seed", type=_seed, default=0)
    g.add_argument("--out", required=True)
    g.add_argument("--images", type=_int_in(0, None, "a count"), default=0,
                   help="also write this many input images (and, with the survivors, the truth categories)")
    g.add_argument("--image-kind", choices=["challenge", "random"], default="challenge",
                   help="challenge (default): the challenge's MNIST digits resized to sqrt(N) x sqrt(N), so that a "
                        "small fraction survives, as in the challenge; random: uniform random binary images")
    g.add_argument("--density", type=_float, default=0.1, help="density of --image-kind random, in [0, 1]")
    g.add_argument("--bias", type=_float, default=None,
                   help="bias for counting the survivors (default: the challenge's bias for N)")
    g.add_argument("--no-survivors", dest="survivors", action="store_false",
                   help="do not run the network to count the images that survive it")
    g.add_argument("--json", action="store_true")

    def network_args(p):
        p.add_argument("--network", required=True, help="directory of n{N}-l{k}.tsv[.gz] files")
        p.add_argument("--layers", type=_positive_int, default=None, help="use only the first L layers")
        p.add_argument("--bias", type=_finite_float32, default=None, help="bias of every neuron (default: by N)")
        p.add_argument("--allow-empty-layers", action="store_true",
                       help="accept an empty (0-byte) layer file as a layer without edges")

    pa = sub.add_parser("partition", help="partition the neurons of every layer over devices")
    network_args(pa)
    pa.add_argument("--parts", type=_positive_int, required=True)
    pa.add_argument("--method", default="kahypar", choices=["block", "random", "kahypar", "mtkahypar"])
    pa.add_argument("--epsilon", type=_float, default=0.03)
    pa.add_argument("--seed", type=_seed, default=0)
    pa.add_argument("--threads", type=_int_in(1, 1024), default=1, help="Mt-KaHyPar threads")
    pa.add_argument("--out", required=True)
    pa.add_argument("--json", action="store_true")
    pa.add_argument("--workers", type=_int_in(1, 1024), default=min(2, os.cpu_count() or 1),
                    help="tool processes refining independent layers at once (default: 2 where there are 2 cores; "
                         "the partition does not depend on it)")
    pa.add_argument("--progress", action="store_true", help="a progress bar on stderr (layers done, volume so far)")
    pa.add_argument("--cache-dir", default=None,
                    help="where partitions are reused by job (default $JAXSDNN_PARTITION_CACHE or "
                         "~/.cache/jaxsdnn/partitions)")
    pa.add_argument("--no-cache", action="store_true", help="always partition, and store nothing")
    pa.add_argument("--no-contract", action="store_true",
                    help="give the tool every neuron, not chunks of identical-input neurons")
    pa.add_argument("--no-bound", action="store_true",
                    help="skip the lower bound (7-25 s on 1024 x 120, a minute on a 4096 x 24 RadiX-Net)")

    i = sub.add_parser("infer", help="run inference and write the categories")
    network_args(i)
    i.add_argument("--images", required=True, help="images .tsv[.gz] or .mtx")
    i.add_argument("--out", required=True, help="categories file to write")
    i.add_argument("--batch-size", type=_positive_int, default=None)
    i.add_argument("--exchange-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="type of the activations sent between devices (bfloat16 / float16: half the bytes, "
                        "rounded; see BENCHMARKS.md for the measured error)")
    i.add_argument("--repeats", type=_positive_int, default=1,
                   help="time this many passes after the first (compiling) one and report their median; 1 (the "
                        "default) times the first pass less its compilation")
    i.add_argument("--overlap", action="store_true",
                   help="compute each layer's own-input product while its exchange is in flight (measured slower on "
                        "the challenge network, where half the edges read received entries; see BENCHMARKS.md)")
    i.add_argument("--tail", default="auto", choices=["auto", "local", "sharded"],
                   help="where the few survivors of a compacted batch run the remaining layers: 'local', on every "
                        "process's own device with a replica of the network (no more exchange rounds); 'sharded', "
                        "on the mesh; 'auto' (the default): local when several processes run and the network takes "
                        "at most 1 GiB. With --devices 1 --data-parallel N over N processes, local runs each "
                        "process's share of the images on its own")
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
    i.add_argument("--seed", type=_seed, default=0)
    i.add_argument("--json", action="store_true")
    _add_device_args(i)

    t = sub.add_parser("train", help="train a sparse network from a config")
    t.add_argument("config_file", nargs="?", metavar="CONFIG", help="the YAML configuration (or --config)")
    t.add_argument("--config", default=None, help="the YAML configuration")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    t.add_argument("--run-dir", default=None, help="where metrics and checkpoints go (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --run-dir")
    t.add_argument("--method", default=None, choices=["block", "random", "kahypar", "mtkahypar"])
    t.add_argument("--json", action="store_true")
    _add_device_args(t)
    t.set_defaults(data_parallel=None)
    return parser


COMMANDS = {"generate": _cmd_generate, "partition": _cmd_partition, "infer": _cmd_infer, "train": _cmd_train}


def _os_message(e: OSError) -> str:
    where = e.filename if e.filename else None
    return f"{where}: {e.strerror or e}" if where else str(e)


_STATE = {"distributed": False}


def main(argv: list[str] | None = None) -> int:
    if wants_supervisor(argv):
        return supervise(argv)
    code = _main(argv)
    if code and _STATE["distributed"]:
        # The runtime's exit handler waits (minutes) for peers that may be gone: end now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    command = "?"
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        out = COMMANDS[args.command](args)
    except UsageError as e:
        if command == "?":
            words = [a for a in (sys.argv[1:] if argv is None else argv) if a in COMMANDS]
            command = words[0] if words else ""
        print(f"jaxsdnn{' ' + command if command else ''}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        msg = _os_message(e) if isinstance(e, OSError) else str(e)
        print(f"jaxsdnn {command}: error: {' '.join(msg.split()) if chr(10) in msg else msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # train saves a checkpoint first and says where
        print(f"jaxsdnn {command}: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"jaxsdnn {command}: error: out of memory (an input or size too large for this machine)", file=sys.stderr)
        return 1
    except RuntimeError as e:  # the XLA runtime (out of memory, a lost peer): one line, not a traceback
        print(f"jaxsdnn {command}: runtime error: {str(e).splitlines()[0][:500] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 1
    except Exception as e:  # a bug: still one line (JAXSDNN_DEBUG=1 shows the traceback)
        if os.environ.get("JAXSDNN_DEBUG"):
            raise
        print(f"jaxsdnn {command}: internal error: {type(e).__name__}: {str(e)[:300]} (JAXSDNN_DEBUG=1 shows "
              "the traceback; please report it)", file=sys.stderr)
        return 1
    code = int(out.pop("_exit", 0)) if isinstance(out, dict) else 0
    if getattr(args, "json", False) and isinstance(out, dict):
        print(json.dumps(_json_ready(out), allow_nan=False))
    return code


def _json_ready(x):
    """``x`` with NumPy scalars as Python numbers and NaN / infinity as null (strict JSON)."""
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
