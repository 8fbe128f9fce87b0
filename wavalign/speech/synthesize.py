"""Speech from text with a Debian text-to-speech program, for the tests and benchmarks that need
real speech (no model downloads here): flite (CMU's synthesizer; its 16 kHz voices rms, slt, awb are
what the built-in recogniser, CMU's PocketSphinx, understands) or espeak-ng (a formant synthesizer:
intelligible to people, mostly not to PocketSphinx — measured: "the cat sat on the mat" heard as
"so my"). scripts/install.sh installs both where it may.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from wavalign.audio import Audio, read_wav

ENGINES = ("flite", "espeak-ng")
# Everyday sentences for the tests' and benchmarks' synthesized speech
SAMPLE_SENTENCES = (
    "please call me tomorrow morning",
    "seven plus two is nine",
    "the train leaves at ten",
    "i would like a cup of coffee",
    "open the window please",
    "we met at the station",
    "the meeting starts at noon",
    "turn left at the next corner",
)


def available(engine: str = "flite") -> bool:
    return shutil.which(engine) is not None


def synthesize(text: str, voice: str = "rms", engine: str = "flite") -> Audio:
    """`text` spoken by `voice` of `engine`, as a mono waveform in [-1, 1] at the program's rate."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: choose from {', '.join(ENGINES)}")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "speech.wav"
        command = (
            ["flite", "-voice", voice, "-t", text, "-o", str(out)]
            if engine == "flite"
            else ["espeak-ng", "-v", voice, "-w", str(out), text]
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{engine} failed on {text!r}: {done.stderr.strip()[-300:]}")
        return read_wav(out)


def toy_manifest(folder: Path, count: int, voices: tuple[str, ...] = ("slt", "awb", "rms")) -> list[dict]:
    """Manifest rows of the toy task spoken by flite: prompt = a train question's text, transcript
    and audio = its right answer ("seven plus two is nine"), answer = the result; the WAVs written
    into `folder`. Every word is in the toy tokenizer's vocabulary."""
    from wavalign.audio import write_wav
    from wavalign.toy.task import all_questions

    rows = []
    questions = all_questions(9)
    for i, question in enumerate(questions[:: max(1, len(questions) // count)][:count]):  # spread over them
        transcript = " ".join(question.answer_words())
        audio_file = folder / f"answer-{i:03d}.wav"
        write_wav(audio_file, synthesize(transcript, voices[i % len(voices)]))
        prompt = " ".join(question.question_words())
        rows.append(
            {
                "id": f"toy-{i}",
                "audio": audio_file.name,
                "transcript": transcript,
                "prompt": prompt,
                "answer": question.result,
            }
        )
    return rows
