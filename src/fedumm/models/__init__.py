"""Model backends. A backend is one module that subclasses ``models.base.Backend`` and
decorates it with ``@register_backend(name)``; the import line below registers it."""

from fedumm.models import blip_vqa, emu3, hf_vlm, janus  # noqa: F401  (registers the built-in backends)
