"""One client for OpenAI-compatible endpoints: the LLM judge and the API teacher.

Any server that speaks the OpenAI chat-completions API serves: a vLLM server (`vllm serve
<model>`) on a GPU box, or a hosted one. Two uses:

- the judge: answers the rule-based verifier cannot decide (no final answer found, or one
  that only symbolic matching could have equated and did not) go to a judge model, as the
  paper's 32B judge did; `judge_results` reports its verdicts beside the rules' and how often
  the two agree;
- the API teacher of `02_distill` (`teachers: [api]`): `ChatEngine` gives an endpoint the
  sampling-engine interface, so a hosted reasoning model samples through the same keyed
  loop, sample cache (resume) and per-level yield as a local teacher.

The API key is read from the environment variable the caller names, at request time; it is
never a parameter, never cached and never written: caches are keyed by what was asked
(endpoint, model, messages, sampling), not by who asked. Requests go through `httpx`
(plain POSTs) rather than a hub client that would send the user's Hugging Face token to a
third-party endpoint when no key is set.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pandas as pd

from synergy.evaluation import SampleCache
from synergy.files import content_hash
from synergy.generation import Completion, SamplingSpec, sample_seed

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
# Defaults of the profile keys `api_timeout`, `api_retries`, `api_max_failures` (distill),
# which the judge of `synergy eval` uses too.
TIMEOUT, RETRIES, MAX_FAILURES = 300.0, 2, 8
PROGRESS_EVERY = 15.0  # seconds without an answer before a line says what is awaited


class EndpointError(ConnectionError):
    """An endpoint refused or failed a request (after retries), or the batch's failure
    budget is spent; one line naming the endpoint and the cause."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    url: str                           # base URL up to /v1, e.g. http://127.0.0.1:8000/v1
    model: str                         # the model name the server serves
    key_env: str = DEFAULT_KEY_ENV     # environment variable holding the key ("": no key)

    @property
    def id(self) -> str:
        """What caches and manifests record: the server and model, never the key."""
        return f"{self.url.rstrip('/')}#{self.model}"


class Client:
    """Chat completions from one endpoint; with `cache_root`, every answer is cached on disk
    (append-only shards, atomic writes) and a repeated request is answered from it.
    `calls` counts requests sent, `cached` those answered from the cache."""

    def __init__(self, endpoint: Endpoint, cache_root: str | Path | None = None, *,
                 concurrency: int = 8, timeout: float = TIMEOUT, retries: int = RETRIES,
                 max_failures: int = MAX_FAILURES):
        import httpx

        self.endpoint, self.concurrency, self.retries = endpoint, concurrency, retries
        self.timeout, self.max_failures = timeout, max_failures
        self.cache = (SampleCache(Path(cache_root) / content_hash(endpoint.id))
                      if cache_root is not None else None)
        self.calls = self.cached = self.failures = 0
        self._lock = threading.Lock()
        self._stop: str | None = None  # set when the failure budget is spent
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.endpoint.key_env, "") if self.endpoint.key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _fail(self, error: str) -> None:
        """Count a failed attempt; past the budget, stop the whole batch."""
        with self._lock:
            self.failures += 1
            if self.failures >= self.max_failures and self._stop is None:
                self._stop = (f"{self.failures} failed attempts (api_max_failures="
                              f"{self.max_failures}); last: {error}")

    def _post(self, body: dict) -> dict:
        import httpx

        url = self.endpoint.url.rstrip("/") + "/chat/completions"
        error = "not sent"
        for attempt in range(self.retries + 1):
            if self._stop:
                break
            try:
                response = self._http.post(url, json=body, headers=self._headers())
            except httpx.TimeoutException:
                error = f"no answer within {self.timeout:g} s (api_timeout)"
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            else:
                if response.status_code == 200:
                    reply, error = _reply(response)
                    if reply is not None:
                        return reply
                else:
                    error = f"HTTP {response.status_code}: {_snippet(response.text)}"
                    if response.status_code < 500 and response.status_code != 429:
                        self._fail(error)
                        break  # a refused request does not get better by asking again
            self._fail(error)
            if attempt < self.retries and not self._stop:
                time.sleep(min(30.0, 2.0 ** attempt))
        with self._lock:  # this request failed, so the batch fails: send nothing more
            self._stop = self._stop or error
        raise EndpointError(f"{self.endpoint.id}: {self._stop}")

    def _ask(self, messages: list[dict], params: dict) -> dict:
        reply = self._post({"model": self.endpoint.model, "messages": messages, **params})
        choice = reply["choices"][0]
        message = choice.get("message") or {}
        text = message.get("content") or ""
        # Reasoning servers (vLLM's reasoning parser, DeepSeek's API) return the thinking
        # apart from the answer; a trace keeps both, in the `<think>` format of the data.
        thinking = message.get("reasoning_content") or message.get("reasoning")
        if thinking:
            text = f"<think>\n{thinking}\n</think>\n\n{text}"
        tokens = (reply.get("usage") or {}).get("completion_tokens")
        return {"text": text, "n_tokens": int(tokens) if tokens is not None else len(text),
                "truncated": choice.get("finish_reason") == "length"}

    def complete(self, requests: list[tuple[list[dict], dict]]) -> list[dict]:
        """One answer ({text, n_tokens, truncated}) per (messages, params) request, sent
        `concurrency` at a time; answers are cached as they arrive, so an interrupted batch
        resumes with what is still missing. `n_tokens` is the server's completion token
        count (the text's length in characters where a server reports none)."""
        keys = [content_hash({"messages": m, **p}, 24) for m, p in requests]
        out: dict[int, dict] = {}
        todo = []
        for i, key in enumerate(keys):
            if self.cache is not None and self.cache.has(key, 0):
                out[i] = self.cache.samples[(key, 0)]
                self.cached += 1
            else:
                todo.append(i)
        pool = ThreadPoolExecutor(max_workers=max(1, self.concurrency))
        futures = {pool.submit(self._ask, *requests[i]): i for i in todo}
        done: list[dict] = []
        pending, t0 = set(futures), time.perf_counter()
        try:
            while pending:
                finished, pending = wait(pending, timeout=PROGRESS_EVERY,
                                         return_when=FIRST_COMPLETED)
                if not finished:
                    print(f"[synergy] {self.endpoint.id}: waiting for answers "
                          f"({len(todo) - len(pending)}/{len(todo)} answered, "
                          f"{time.perf_counter() - t0:.0f} s, {self.failures} failed attempts, "
                          f"api_timeout {self.timeout:g} s)", file=sys.stderr, flush=True)
                # Every answer that arrived is kept before a failure among them stops the
                # batch (one `wait` can return both).
                failed = [f for f in finished if f.exception() is not None]
                for future in finished - set(failed):
                    i = futures[future]
                    out[i] = {"key": keys[i], "index": 0, **future.result()}
                    self.calls += 1
                    done.append(out[i])
                    if self.cache is not None and len(done) >= 32:
                        self.cache.add(done)
                        done = []
                if failed:
                    raise failed[0].exception()
        except BaseException:
            self._stop = self._stop or "stopped"  # requests not yet sent are not sent
            for future in pending:
                future.cancel()
            raise
        finally:
            if self.cache is not None and done:
                self.cache.add(done)  # what was answered is kept: the same call resumes
            # Requests in flight on a failed batch end on their own (api_timeout at most).
            pool.shutdown(wait=not self._stop, cancel_futures=True)
        return [out[i] for i in range(len(requests))]


def _snippet(text: str) -> str:
    """The start of a response body, on one line (an HTML page says what it is)."""
    return " ".join(text.split())[:200] or "(empty body)"


def _reply(response) -> tuple[dict | None, str]:
    """(the parsed chat-completions reply, "") or (None, what is wrong with it)."""
    try:
        reply = response.json()
    except ValueError:
        kind = response.headers.get("content-type", "?").split(";")[0]
        return None, f"HTTP 200 but the body is not JSON ({kind}): {_snippet(response.text)}"
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, f"HTTP 200 but no choices in the reply: {_snippet(response.text)}"
    return reply, ""


def client_settings(cfg) -> dict[str, Any]:
    """The Client keywords of a config holding `api_timeout`, `api_retries` and
    `api_max_failures`."""
    return {"timeout": cfg.api_timeout, "retries": cfg.api_retries,
            "max_failures": cfg.api_max_failures}


# --- the API teacher: an endpoint behind the sampling-engine interface ----------------------

class MessagesTemplate:
    """`chat_prompt`'s template for an endpoint: the prompt is the chat messages as JSON."""

    @staticmethod
    def apply_chat_template(messages, tokenize=False, add_generation_prompt=True) -> str:
        return json.dumps(messages, sort_keys=True)


def _image_url(image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def sampling_params(spec: SamplingSpec, seed: int) -> dict[str, Any]:
    """OpenAI sampling fields of a spec; top_k (a vLLM extension) only when it cuts."""
    params = {"temperature": spec.temperature, "top_p": spec.top_p,
              "max_tokens": spec.max_new_tokens, "seed": seed}
    return {**params, "top_k": spec.top_k} if spec.top_k > 0 else params


class ChatEngine:
    """The `generation` engine interface over an endpoint: sample j of a prompt is one
    request with seed `sample_seed(seed, key, j)`, so `evaluation.sample_table` caches,
    resumes and stops early with an API teacher as with a local model. Whether a server
    honours the seed is up to it (vLLM does); the cache keeps what was drawn either way."""

    template = MessagesTemplate()

    def __init__(self, client: Client, batch_rows: int = 256):
        self.client, self.batch_rows = client, batch_rows

    @property
    def id(self) -> str:
        return f"api:{self.client.endpoint.id}"

    def generate(self, prompts, keys, first, n, spec, seed, images=None):
        requests = []
        for i, (prompt, key) in enumerate(zip(prompts, keys)):
            messages = json.loads(prompt)
            if images and images[i]:
                pictures = iter(images[i])
                for message in messages:
                    if isinstance(message["content"], list):
                        message["content"] = [
                            {"type": "image_url", "image_url": {"url": _image_url(next(pictures))}}
                            if part.get("type") == "image" else part
                            for part in message["content"]]
            requests += [(messages, sampling_params(spec, sample_seed(seed, key, first + j)))
                         for j in range(n)]
        answers = self.client.complete(requests)
        flat = [Completion(a["text"], a["n_tokens"], a["truncated"]) for a in answers]
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]


# --- the judge ------------------------------------------------------------------------------

JUDGE_PROMPT = """You are grading a response to a question against its reference answer.

Question:
{question}

Reference answer: {gold}

Response (its end holds its final answer):
{response}

Does the response's final answer state the same answer as the reference (equivalent values,
the same option, the same meaning)? Reply with one word: yes or no."""
# The end of a long response is where its final answer is.
RESPONSE_TAIL_CHARS = 4000


def undecided(audit_table: pd.DataFrame) -> pd.Series:
    """Per row of a `verify.audit` table: True where the rules cannot decide, i.e. no final
    answer found, or a wrong verdict only symbolic matching (math-verify) could have turned,
    so a paraphrase or an unparsed form may hide a right answer."""
    return audit_table["path"].isin(["unparsed", "math_verify"]) & ~audit_table["rule"].astype(bool)


def parse_verdict(text: str) -> bool | None:
    """yes -> True, no -> False, anything else -> None (counted, never guessed)."""
    words = text.strip().lower().replace("*", "").split()
    word = words[-1].strip(".!:") if words else ""
    return {"yes": True, "no": False}.get(word)


def judge_results(client: Client, results: pd.DataFrame, *, check_decided: int = 0,
                  seed: int = 0) -> pd.DataFrame:
    """The judge's verdict on every undecided sample of an evaluation table (one row per
    question: `question`, `answer`, `samples`, `correct`[, `qid`, `level`, `choices`,
    MathVista's columns]), plus `check_decided` samples the rules did decide (drawn with
    `seed`), which measure how far judge and rules agree. One row per judged sample: qid,
    level, sample, undecided, rule, judge (None: a verdict that was neither yes nor no)."""
    from synergy.verify import audit

    df = results.reset_index(drop=True)
    flat = df.assign(qid=df["qid"] if "qid" in df.columns else df.index,
                     sample=[list(range(len(s))) for s in df["samples"]]).explode(
        ["samples", "correct", "sample"], ignore_index=True)
    columns = {c: list(flat[c]) if c in flat.columns else None
               for c in ("choices", "precision", "unit", "answer_type")}
    columns["choices"] = None if columns["choices"] is None else [
        list(c) if c is not None and len(c) else None for c in columns["choices"]]
    table = audit(list(flat["samples"]), [str(a) for a in flat["answer"]], columns["choices"],
                  precision=columns["precision"], unit=columns["unit"],
                  answer_type=columns["answer_type"])
    flat = flat.assign(undecided=undecided(table).to_numpy(), rule=table["rule"].to_numpy())
    picked = flat[flat["undecided"]]
    rest = flat[~flat["undecided"]]
    if check_decided and len(rest):
        picked = pd.concat([picked, rest.sample(min(check_decided, len(rest)),
                                                random_state=seed)])
    cols = ["qid", "level", "sample", "undecided", "rule", "judge", "judge_text"]
    if picked.empty:
        return pd.DataFrame(columns=cols)
    answers = client.complete([
        ([{"role": "user", "content": JUDGE_PROMPT.format(
            question=r.question, gold=r.answer, response=str(r.samples)[-RESPONSE_TAIL_CHARS:])}],
         {"temperature": 0.0, "max_tokens": 8, "seed": 0}) for r in picked.itertuples()])
    picked = picked.assign(judge=[parse_verdict(a["text"]) for a in answers],
                           judge_text=[a["text"] for a in answers],
                           level=picked["level"] if "level" in picked.columns else None)
    return picked[cols].reset_index(drop=True)


def agreement(judged: pd.DataFrame) -> dict[str, Any]:
    """Counts of a `judge_results` table: how many samples were judged, how many undecided
    ones the judge calls right, how often judge and rules agree (on the decided samples
    checked, and on all), and unreadable verdicts."""
    readable = judged[judged["judge"].notna()]
    agree = readable["judge"].astype(bool) == readable["rule"].astype(bool)
    checked = readable[~readable["undecided"].astype(bool)]
    undecided_ = readable[readable["undecided"].astype(bool)]
    return {"judged": len(judged), "undecided": int(judged["undecided"].sum()),
            "undecided_judged_right": int(undecided_["judge"].astype(bool).sum()),
            "decided_checked": len(checked),
            "agreement_on_decided": float(agree[checked.index].mean()) if len(checked)
            else None,
            "agreement_all": float(agree.mean()) if len(readable) else None,
            "unreadable": int(judged["judge"].isna().sum())}


def judged_accuracy(results: pd.DataFrame, judged: pd.DataFrame) -> pd.DataFrame:
    """Per level (and 'all'): accuracy by the rules, and with undecided samples the judge
    calls right counted right (the rules' verdict stands on every decided sample)."""
    flips = judged[judged["undecided"].astype(bool) & judged["judge"].eq(True)]
    right = {(q, s) for q, s in zip(flips["qid"], flips["sample"])}
    df = results.reset_index(drop=True)
    qids = df["qid"] if "qid" in df.columns else df.index
    judged_acc = [sum(bool(c) or (q, j) in right for j, c in enumerate(cs)) / max(1, len(cs))
                  for q, cs in zip(qids, df["correct"])]
    df = df.assign(judged=judged_acc)
    groups = [(f"L{lv}", p) for lv, p in df.groupby("level")] + [("all", df)]
    return pd.DataFrame([{"level": lv, "questions": len(p), "accuracy": p["accuracy"].mean(),
                          "accuracy_with_judge": p["judged"].mean()} for lv, p in groups])
