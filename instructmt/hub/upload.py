"""Upload: stage the run, then send it as ONE commit (the Hub applies a commit whole or not at all,
so a failed upload never leaves a half-published adapter behind). Every failure is one line naming
the step, the HTTP status and the server's message, with the token redacted."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import PublishError
from .run import read_run
from .stage import stage


@dataclass
class PublishResult:
    repo_id: str
    revision: str
    files: list[str]
    skipped: list[tuple[str, str]]
    commit_url: str | None = None
    folder: Path | None = None  # dry run: where the folder was written
    card_text: str = ""
    dry_run: bool = False


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _describe_failure(step: str, err: Exception, token: str | None) -> str:
    """One line: which step, the HTTP status and the server's message."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    url = ""
    try:
        url = str(response.request.url).split("?")[0] if response is not None else ""
    except Exception:  # noqa: BLE001 - a response without a request
        url = ""
    if "/preupload/" in url:
        step = f"{step} (preupload: asking the Hub how to send each file)"
    elif "/validate-yaml" in url:
        step = f"{step} (model card metadata validation)"
    if status is not None:
        server = getattr(err, "server_message", None) or str(err).splitlines()[0]
        detail = f"HTTP {status} from {url or 'the Hub'}: {server.strip()}"
    else:
        detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}"
    return _redact(f"step '{step}' failed — {detail}", token)


def publish(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
            base_model_id: str | None = None, tokenizer: str = "auto", datasets: list[str] = (),
            dry_run: bool = False, output: str | Path | None = None, token: str | None = None,
            endpoint: str | None = None, include_base: bool = False,
            eval_dir: str | Path | None = None) -> PublishResult:
    """Stage the run and upload it as one commit (or, with `dry_run`, only write the folder).

    `endpoint` is for programmatic use only; by default huggingface_hub picks it (HF_ENDPOINT)."""
    from huggingface_hub import get_token

    run = read_run(run_dir, eval_dir=eval_dir)
    token = token or get_token()
    branch = revision or "main"
    if dry_run:
        folder = Path(output) if output else Path(tempfile.mkdtemp(prefix="instructmt-publish-"))
        try:
            staged = stage(run, folder, repo_id=repo_id, base_model_id=base_model_id, tokenizer=tokenizer,
                           datasets=datasets, token=token, include_base=include_base)
        except BaseException:
            if not output:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return PublishResult(repo_id, branch, staged.files, staged.skipped, folder=folder,
                             card_text=staged.card_text, dry_run=True)
    if output:
        raise PublishError("--output only goes with --dry-run (a real publish stages in a temporary folder)")
    from huggingface_hub import CommitOperationAdd, HfApi

    tmp = Path(tempfile.mkdtemp(prefix="instructmt-publish-"))
    try:
        # Stage first: a run that cannot be published fails before any network call.
        staged = stage(run, tmp / "upload", repo_id=repo_id, base_model_id=base_model_id, tokenizer=tokenizer,
                       datasets=datasets, token=token, include_base=include_base)
        if not token:
            raise PublishError("no Hugging Face token found: set HF_TOKEN or log in with `hf auth login`")
        api = HfApi(token=token, endpoint=endpoint) if endpoint else HfApi(token=token)
        nothing = "nothing was published"
        try:
            api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        except Exception as e:  # noqa: BLE001 - every failure becomes one clear line
            raise PublishError(f"{_describe_failure('create repository', e, token)}; {nothing}") from None
        if branch != "main":
            try:
                api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type="model")
            except Exception as e:  # noqa: BLE001
                raise PublishError(f"{_describe_failure(f'create branch {branch}', e, token)}; "
                                   f"{nothing} (the repository exists, no files were committed)") from None
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(staged.folder / rel))
                      for rel in staged.files]
        try:
            info = api.create_commit(repo_id, operations=operations, commit_message=staged.commit_message,
                                     commit_description=staged.commit_description, revision=branch,
                                     repo_type="model")
        except Exception as e:  # noqa: BLE001
            raise PublishError(f"{_describe_failure('commit', e, token)}; {nothing}: all {len(operations)} "
                               "files go up in a single commit, which was not made") from None
        return PublishResult(repo_id, branch, staged.files, staged.skipped, commit_url=str(info.commit_url),
                             card_text=staged.card_text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
