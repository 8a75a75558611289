"""Gemma 4 audio preprocessing, as transformers' `Gemma4AudioFeatureExtractor` does it (numpy).

A clip (mono float samples at 16 kHz, at most 30 s) is right-padded with zeros to a multiple of 128
samples, given `frame_length // 2` zeros in front ("semicausal": the first frame is centred at
t=0), cut into frames of `frame_length + 1` samples every `hop_length`, windowed (periodic Hann),
and turned into log-mel features: `log(|rfft| @ mel_filters + mel_floor)`, HTK mel scale, no
filter normalisation. A frame counts only if its whole window is real audio; features of the
others are zero. The tower then keeps one soft token per 4 frames (40 ms).

WAV files are read with the standard library's `wave` (8/16/24/32-bit PCM); other rates than
16 kHz are resampled with scipy's polyphase filter when scipy is installed.
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .image import MediaError

__all__ = ["AudioOptions", "AudioFeatures", "read_wav", "audio_features", "mel_filters", "n_soft_tokens"]


@dataclass(frozen=True, kw_only=True)
class AudioOptions:
    """The feature extractor's settings (preprocessor_config.json), transformers' defaults."""

    sampling_rate: int = 16_000
    feature_size: int = 128
    frame_length_ms: float = 20.0
    hop_length_ms: float = 10.0
    min_frequency: float = 0.0
    max_frequency: float = 8000.0
    mel_floor: float = 1e-3
    preemphasis: float = 0.0
    preemphasis_htk_flavor: bool = True
    fft_overdrive: bool = False
    input_scale_factor: float = 1.0
    per_bin_mean: tuple[float, ...] | None = None
    per_bin_stddev: tuple[float, ...] | None = None
    max_samples: int = 480_000  # 30 s: longer clips are cut, as the extractor truncates
    pad_to_multiple_of: int = 128
    max_soft_tokens: int = 750  # the processor's audio_seq_length

    @property
    def frame_length(self) -> int:
        return int(round(self.sampling_rate * self.frame_length_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.sampling_rate * self.hop_length_ms / 1000.0))

    @property
    def fft_length(self) -> int:
        return 2 ** math.ceil(math.log2(self.frame_length)) * (2 if self.fft_overdrive else 1)


@dataclass(frozen=True)
class AudioFeatures:
    features: np.ndarray  # [n_frames, feature_size] float32, zero where `mask` is False
    mask: np.ndarray  # [n_frames] bool: frames whose window is real audio
    n_soft_tokens: int


def mel_filters(options: AudioOptions) -> np.ndarray:
    """[fft_length // 2 + 1, feature_size] triangular filters, HTK scale (transformers' `mel_filter_bank`)."""

    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    mels = np.linspace(to_mel(options.min_frequency), to_mel(options.max_frequency), options.feature_size + 2)
    centres = 700.0 * (np.power(10, mels / 2595.0) - 1.0)
    bins = np.linspace(0, options.sampling_rate // 2, options.fft_length // 2 + 1)
    diff = np.diff(centres)
    slopes = centres[None, :] - bins[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return np.maximum(np.zeros(1), np.minimum(down, up))


def _window(length: int) -> np.ndarray:
    return np.hanning(length + 1)[:-1].astype(np.float32)  # periodic Hann


def n_soft_tokens(mask: np.ndarray, options: AudioOptions) -> int:
    """The soft tokens of a clip: its frame mask after the tower's two stride-2 convolutions."""
    for _ in range(2):
        mask = mask[::2]
    return min(int(mask.sum()), options.max_soft_tokens)


def audio_features(samples: np.ndarray, options: AudioOptions | None = None) -> AudioFeatures:
    """Log-mel features of one mono clip (float samples at `options.sampling_rate`)."""
    options = options or AudioOptions()
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise MediaError(f"an audio clip must be mono samples, got an array of shape {list(samples.shape)}")
    samples = samples[: options.max_samples].astype(np.float32)
    if samples.size == 0:
        raise MediaError("the audio clip is empty")
    step = options.pad_to_multiple_of
    padded = -(-samples.size // step) * step
    real = np.zeros(padded, dtype=np.int32)
    real[: samples.size] = 1
    wave_ = np.zeros((1, padded), dtype=np.float32)
    wave_[0, : samples.size] = samples
    if options.input_scale_factor != 1.0:
        wave_ = wave_ * options.input_scale_factor
    frame, hop = options.frame_length, options.hop_length
    wave_ = np.pad(wave_, ((0, 0), (frame // 2, 0)))
    real = np.pad(real, (frame // 2, 0))
    size = frame + 1
    n_frames = (wave_.shape[1] - size) // hop + 1
    if n_frames <= 0:
        raise MediaError(
            f"the audio clip is too short: {samples.size} samples, at least {size - frame // 2} needed"
        )
    frames = np.lib.stride_tricks.as_strided(
        wave_, shape=(1, n_frames, size), strides=(wave_.strides[0], wave_.strides[1] * hop, wave_.strides[1])
    )
    if options.preemphasis > 0.0:
        p = options.preemphasis
        if options.preemphasis_htk_flavor:
            frames = np.concatenate(
                [frames[..., :1] * (1.0 - p), frames[..., 1:-1] - p * frames[..., :-2]], axis=-1
            )
        else:
            frames = frames[..., 1:] - p * frames[..., :-1]
    else:
        frames = frames[..., :-1]
    spectrum = np.abs(np.fft.rfft(frames * _window(frame), n=options.fft_length, axis=-1))
    log_mel = np.log(
        np.matmul(spectrum, mel_filters(options)) + np.array(options.mel_floor, dtype=np.float64)
    )
    if options.per_bin_mean is not None:
        log_mel = log_mel - np.asarray(options.per_bin_mean).reshape(1, 1, -1)
    if options.per_bin_stddev is not None:
        log_mel = log_mel / np.asarray(options.per_bin_stddev).reshape(1, 1, -1)
    features = log_mel[0].astype(np.float32)
    mask = real[np.arange(n_frames) * hop + size - 1].astype(bool)
    return AudioFeatures(features * mask[:, None], mask, n_soft_tokens(mask, options))


def read_wav(
    source: str | Path | bytes, *, max_bytes: int, sampling_rate: int = 16_000, what: str | None = None
) -> np.ndarray:
    """A WAV file (path or bytes) as mono float32 samples in [-1, 1] at `sampling_rate`."""
    name = what or (str(source) if not isinstance(source, bytes) else "audio data")
    if isinstance(source, bytes):
        data = source
    else:
        try:
            size = Path(source).stat().st_size
            if size > max_bytes:
                raise MediaError(f"{name}: audio is {size} bytes, over the {max_bytes}-byte limit")
            data = Path(source).read_bytes()
        except OSError as exc:
            raise MediaError(f"{name}: cannot read the audio ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise MediaError(f"{name}: audio is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise MediaError(f"{name}: not a readable WAV file ({exc}); send 16-bit PCM WAV") from None
    samples = _pcm(raw, width, name).reshape(-1, channels).mean(axis=1, dtype=np.float32)
    if rate != sampling_rate:
        samples = _resample(samples, rate, sampling_rate, name)
    return samples


def _pcm(raw: bytes, width: int, name: str) -> np.ndarray:
    if width == 1:  # unsigned 8-bit
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return (np.where(value >= 1 << 23, value - (1 << 24), value)).astype(np.float32) / float(1 << 23)
    if width == 4:
        return (np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    raise MediaError(f"{name}: {8 * width}-bit WAV samples are not supported; use 16-bit PCM")


def _resample(samples: np.ndarray, rate: int, target: int, name: str) -> np.ndarray:
    try:
        from scipy.signal import resample_poly
    except ImportError:
        raise MediaError(
            f"{name}: the audio is {rate} Hz and the model takes {target} Hz; resample it (e.g. "
            f"ffmpeg -i IN -ar {target} OUT.wav) or install scipy"
        ) from None
    g = math.gcd(rate, target)
    return resample_poly(samples, target // g, rate // g).astype(np.float32)
