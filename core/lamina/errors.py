"""lamina's exception hierarchy, mirroring containers/storage's sentinel errors.

Messages carry the Go error text where scripts may match it (``layer not known``)."""

from __future__ import annotations


class LaminaError(Exception):
    """Base of every error lamina raises on purpose."""


# ---------------------------------------------------------------- drivers


class DriverError(LaminaError):
    """A graph driver could not be found, loaded or used."""


class DriverNotFound(DriverError):
    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        self.available = sorted(available)
        have = ", ".join(self.available) or "none"
        super().__init__(
            f"graph driver {name!r} is not installed (installed drivers: {have}); "
            f"install the distribution lamina-{name} or choose another driver"
        )


class DriverConflict(DriverError):
    def __init__(self, name: str, providers: list[str]) -> None:
        self.name = name
        self.providers = providers
        super().__init__(
            f"graph driver {name!r} is provided by more than one distribution "
            f"({', '.join(providers)}); uninstall all but one"
        )


class DriverLoadError(DriverError):
    def __init__(self, name: str, cause: BaseException) -> None:
        self.name = name
        self.cause = cause
        super().__init__(f"graph driver {name!r} failed to load: {type(cause).__name__}: {cause}")


class DriverNotSupported(DriverError):
    """The driver is installed but cannot work on this host or graph root (Go's ErrNotSupported)."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why
        super().__init__(f"driver not supported: {name}: {why}")


class DriverInterfaceError(DriverError):
    """A driver's hook implementations do not match the contract."""

    def __init__(self, name: str, problem: str, hooks: list[str]) -> None:
        self.name = name
        self.hooks = sorted(hooks)
        super().__init__(f"graph driver {name!r} {problem}: {', '.join(self.hooks)}")


class PluginError(LaminaError):
    """An extra plugin (group lamina.plugins) is missing or breaks the rules."""


class InvalidOption(LaminaError):
    """A storage option or configuration value is wrong."""


# ---------------------------------------------------------------- store objects


class NotKnown(LaminaError):
    """Base of the 'not known' lookups."""

    text = "not known"

    def __init__(self, what: str = "") -> None:
        self.what = what
        super().__init__(self.text)


class LayerUnknown(NotKnown):
    text = "layer not known"


class ImageUnknown(NotKnown):
    text = "image not known"


class ContainerUnknown(NotKnown):
    text = "container not known"


class ParentUnknown(NotKnown):
    text = "parent of layer not known"


class LayerNotMounted(LaminaError):
    def __init__(self, what: str = "") -> None:
        super().__init__("layer not mounted")


class DuplicateID(LaminaError):
    def __init__(self, what: str = "") -> None:
        super().__init__("that ID is already in use")


class DuplicateName(LaminaError):
    def __init__(self, message: str = "that name is already in use") -> None:
        super().__init__(message)


class LayerHasChildren(LaminaError):
    def __init__(self, message: str = "layer has children") -> None:
        super().__init__(message)


class LayerUsedByImage(LaminaError):
    def __init__(self, message: str = "layer is in use by an image") -> None:
        super().__init__(message)


class LayerUsedByContainer(LaminaError):
    def __init__(self, message: str = "layer is in use by a container") -> None:
        super().__init__(message)


class ImageUsedByContainer(LaminaError):
    def __init__(self, message: str = "image is in use by a container") -> None:
        super().__init__(message)


class LayerMounted(LaminaError):
    def __init__(self, message: str = "a layer is mounted") -> None:
        super().__init__(message)


class StoreIsReadOnly(LaminaError):
    def __init__(self, message: str = "called a write method on a read-only store") -> None:
        super().__init__(message)


class IncompleteLayer(LaminaError):
    def __init__(self, message: str = "layer is incomplete") -> None:
        super().__init__(message)


class InvalidBigDataName(LaminaError):
    def __init__(self, message: str = "not a valid name for a big data item") -> None:
        super().__init__(message)


class BigDataUnknown(LaminaError):
    """Named big-data item is missing (Go wraps os.ErrNotExist: 'file does not exist')."""

    def __init__(self, message: str = "file does not exist") -> None:
        super().__init__(message)


class InvalidDigest(LaminaError):
    def __init__(self, value: str) -> None:
        super().__init__(f"{value}: invalid checksum digest format")


class ArchiveError(LaminaError):
    """A tar stream is corrupt, truncated or hostile."""


class UnsafeArchive(ArchiveError):
    """An entry tried to write outside the layer or create something not allowed."""


class ConfigError(LaminaError):
    """storage.conf or an environment setting is invalid; the message names the file and key."""


class StoreCorrupt(LaminaError):
    """Metadata on disk cannot be understood."""
