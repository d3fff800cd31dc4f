"""DiffVC's whole configuration: one frozen dataclass of the parts' configs, saved as a pack's config.json.

Presets: `tiny` (the embedded CPU pack: PixelUnshuffle latent, DIS flow, small networks) and `full` (the paper's
scale: SD-2.1-base VAE, U-Net and a ControlNet copy, SpyNet flow). Same code, different configs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from codec.diffvc.context import TemporalContextConfig
from codec.diffvc.diffusion import DiffusionConfig, full_diffusion_config, tiny_diffusion_config
from codec.diffvc.latent import LatentSpaceConfig
from codec.diffvc.latent_codec import ContextualLatentCodecConfig, IntraLatentCodecConfig
from codec.diffvc.motion import DISFlowConfig, FlowEstimatorConfig, MotionCodecConfig

PAD_MULTIPLE = 64  # frames are replicate-padded to this (the hyperprior of the motion codec works at 1/64)


@dataclass(frozen=True)
class DiffVCConfig:
    """Every part of a DiffVC model. `flow` picks the encoder-side flow estimator (not part of the bitstream)."""

    preset: str
    latent_space: LatentSpaceConfig
    flow: Literal["spynet", "dis"]
    spynet: FlowEstimatorConfig
    dis: DISFlowConfig
    motion: MotionCodecConfig
    context: TemporalContextConfig
    intra: IntraLatentCodecConfig
    inter: ContextualLatentCodecConfig
    diffusion: DiffusionConfig
    extra: dict[str, Any] = field(default_factory=dict)  # provenance notes (training stage, data), not used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffVCConfig:
        try:
            return cls(
                preset=data["preset"],
                latent_space=LatentSpaceConfig(**data["latent_space"]),
                flow=data["flow"],
                spynet=FlowEstimatorConfig.from_dict(data["spynet"]),
                dis=DISFlowConfig(**data["dis"]),
                motion=MotionCodecConfig.from_dict(data["motion"]),
                context=TemporalContextConfig.from_dict(data["context"]),
                intra=IntraLatentCodecConfig.from_dict(data["intra"]),
                inter=ContextualLatentCodecConfig.from_dict(data["inter"]),
                diffusion=DiffusionConfig.from_dict(data["diffusion"]),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a DiffVC config: {e}") from None


def tiny_config() -> DiffVCConfig:
    latent = LatentSpaceConfig(kind="pixel_unshuffle")
    context = TemporalContextConfig.tiny()
    return DiffVCConfig(
        preset="tiny",
        latent_space=latent,
        flow="dis",
        spynet=FlowEstimatorConfig.tiny(),
        dis=DISFlowConfig(),
        motion=MotionCodecConfig.tiny(),
        context=context,
        intra=IntraLatentCodecConfig.tiny(latent.channels),
        inter=ContextualLatentCodecConfig.tiny(latent.channels),
        diffusion=tiny_diffusion_config(latent_channels=latent.channels, context_channels=context.channels[0]),
    )


def full_config(base_model: str | None = None, vae_sha256: str | None = None) -> DiffVCConfig:
    """The paper's scale. base_model: the Stable Diffusion base whose VAE it uses (`codec.diffvc.sd_base`; None: a
    random-init VAE of SD-2.1's shape), vae_sha256: the weights that base must have."""
    latent = LatentSpaceConfig(kind="sd_vae", base_model=base_model, vae_sha256=vae_sha256)
    context = TemporalContextConfig.full()
    return DiffVCConfig(
        preset="full",
        latent_space=latent,
        flow="spynet",
        spynet=FlowEstimatorConfig.full(),
        dis=DISFlowConfig(),
        motion=MotionCodecConfig.full(),
        context=context,
        intra=IntraLatentCodecConfig.full(latent.channels),
        inter=ContextualLatentCodecConfig.full(latent.channels),
        diffusion=full_diffusion_config(context_channels=context.channels[0]),
    )


PRESETS = {"tiny": tiny_config, "full": full_config}
