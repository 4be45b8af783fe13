"""Models: the store on disk (`store`), loading into the kernel (`loading`: LoadedModel, the
two halves of a load, unloading) and LoRA models served over a base (`adapters`)."""
from llmos.kernel.models.store import DEFAULT_MODEL, ModelStore

__all__ = ["DEFAULT_MODEL", "ModelStore"]
