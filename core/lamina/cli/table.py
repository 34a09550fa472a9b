"""The command table, as data: names, argument counts, usage text, flags and the function to run.

Dispatch imports only the chosen command's module (``target`` is ``"module:function"``), so
nothing here may import more than the standard library's smallest parts.

Order, names, usage strings and flag definitions follow containers-storage 1.43
(``cmd/containers-storage/*.go``; Go runs the files' ``init()`` in file-name order, which is
the order of the usage listing). Commands added by 1.62 and by lamina are marked with *origin*.
"""

from __future__ import annotations

__all__ = ["COMMANDS", "Command", "find"]

# Flag specs: (kind, names as mflag registers them, usage, dest[, default]). A name starting with "!" is a
# lamina addition: accepted, but left out of the help so that it stays identical to Go's. Every default is the zero
# value: in Go they are wired to package variables that are still zero at registration time.
JSON = ("bool", ["-json", "j"], "Prefer JSON output", "json")
NAMES_LAYER = ("list", ["-name", "n"], "Layer name", "name")
MAP_FLAGS = (
    ("bool", ["-hostuidmap"], "Force host UID map", "hostuidmap"),
    ("bool", ["-hostgidmap"], "Force host GID map", "hostgidmap"),
    ("string", ["-uidmap"], "UID map", "uidmap"),
    ("string", ["-gidmap"], "GID map", "gidmap"),
    ("string", ["-subuidmap"], "subuid UID map for a user", "subuidmap"),
    ("string", ["-subgidmap"], "subgid GID map for a group", "subgidmap"),
)


class Command:
    """One subcommand. ``min_args``/``max_args`` of 0 mean "no check" (as in Go)."""

    __slots__ = ("names", "options_help", "usage", "min_args", "max_args", "flags", "target",
                 "origin", "needs_store", "help_text", "needs_defaults")

    def __init__(self, names: tuple[str, ...], options_help: str, usage: str, min_args: int,
                 max_args: int, flags: tuple, target: str, origin: str = "1.43",
                 needs_store: bool = True, help_text: str = "", needs_defaults: bool = True) -> None:
        self.names = names
        self.options_help = options_help
        self.usage = usage
        self.min_args = min_args
        self.max_args = max_args
        self.flags = flags
        self.target = target
        self.origin = origin  # "1.43", "1.62" or "lamina"
        self.needs_store = needs_store
        self.help_text = help_text
        # False: storage.conf is not loaded before the command runs (it finds what it needs)
        self.needs_defaults = needs_defaults


def _c(names, options_help, usage, min_args, max_args, flags, target, **kw) -> Command:
    return Command(tuple(names), options_help, usage, min_args, max_args, tuple(flags),
                   "lamina.cli." + target, **kw)


_CTR_DATA = "[options [...]] containerNameOrID dataName"
_IMG_DATA = "[options [...]] imageNameOrID dataName"
_LAYER_DATA = "[options [...]] layerID dataName"

COMMANDS: tuple[Command, ...] = (
    # check.go (1.62)
    _c(["check"], "[options [...]]", "Check storage consistency", 0, 0,
       [JSON, ("string", ["-max", "m"], "Maximum allowed age for unreferenced layers", "max", "24h"),
        ("bool", ["-repair", "r"], "Remove damaged images and layers", "repair"),
        ("bool", ["-force", "f"], "Remove damaged containers", "force"),
        ("bool", ["-quick", "q"], "Perform only quick checks", "quick")],
       "cmd_check:check", origin="1.62"),
    # config.go (1.62)
    _c(["config"], "[configurationFile]", "Print storage library configuration as JSON", 0, 1, [],
       "cmd_misc:config", origin="1.62", needs_store=False),
    # container.go
    _c(["container"], "[options [...]] containerNameOrID [...]", "Examine a container", 1, 0,
       [JSON], "cmd_containers:container"),
    _c(["list-container-data", "listcontainerdata"], "[options [...]] containerNameOrID",
       "List data items that are attached to an container", 1, 1, [JSON], "cmd_data:list_data"),
    _c(["get-container-data", "getcontainerdata"], _CTR_DATA, "Get data that is attached to an container",
       2, 0, [("string", ["-file", "f"], "Write data to file", "file")], "cmd_data:get_data"),
    _c(["get-container-data-size", "getcontainerdatasize"], _CTR_DATA,
       "Get size of data that is attached to an container", 2, 0, [], "cmd_data:get_data_size"),
    _c(["get-container-data-digest", "getcontainerdatadigest"], _CTR_DATA,
       "Get digest of data that is attached to an container", 2, 0, [], "cmd_data:get_data_digest"),
    _c(["set-container-data", "setcontainerdata"], _CTR_DATA, "Set data that is attached to an container",
       2, 0, [("string", ["-file", "f"], "Read data from file", "file")], "cmd_data:set_data"),
    _c(["get-container-dir", "getcontainerdir"], "[options [...]] containerNameOrID",
       "Find the container's associated data directory", 1, 0, [], "cmd_containers:get_dir"),
    _c(["get-container-run-dir", "getcontainerrundir"], "[options [...]] containerNameOrID",
       "Find the container's associated runtime directory", 1, 0, [], "cmd_containers:get_run_dir"),
    _c(["container-parent-owners"], "[options [...]] containerNameOrID [...]",
       "Compute the set of unmapped parent UIDs and GIDs of the container", 1, 0, [JSON],
       "cmd_layers:container_parent_owners"),
    # containers.go
    _c(["containers"], "[options [...]]", "List containers", 0, 0, [JSON], "cmd_containers:containers"),
    # copy.go (Go also registers an empty name "" for --chown, which makes its usage panic)
    _c(["copy"], "[options [...]] [sourceLayerNameOrID:]/path [...] targetLayerNameOrID:/path",
       "Copy files or directories into a layer, possibly from another layer", 2, 0,
       [("string", ["-chown"], "Set owner on new copies", "chown"), JSON], "cmd_copy:copy"),
    # create.go
    _c(["create-layer", "createlayer"], "[options [...]] [parentLayerNameOrID]", "Create a new layer", 0, 1,
       [("string", ["-label", "l"], "Mount Label", "label"), NAMES_LAYER,
        ("string", ["-id", "i"], "Layer ID", "id"), ("bool", ["-readonly", "r"], "Mark as read-only", "readonly"),
        JSON, *MAP_FLAGS], "cmd_layers:create_layer"),
    _c(["import-layer", "importlayer"], "[options [...]] [parentLayerNameOrID]", "Import a new layer", 0, 1,
       [("string", ["-label", "l"], "Mount Label", "label"), NAMES_LAYER,
        ("string", ["-id", "i"], "Layer ID", "id"), ("bool", ["-readonly", "r"], "Mark as read-only", "readonly"),
        JSON, ("string", ["-file", "f"], "Read from file instead of stdin", "file"), *MAP_FLAGS],
       "cmd_layers:import_layer"),
    _c(["create-image", "createimage"], "[options [...]] topLayerNameOrID", "Create a new image using layers",
       0, 1,
       [("list", ["-name", "n"], "Image name", "name"), ("string", ["-id", "i"], "Image ID", "id"),
        ("string", ["-digest", "d"], "Image Digest", "digest"),
        ("string", ["-metadata", "m"], "Metadata", "metadata"),
        ("string", ["-metadata-file", "f"], "Metadata File", "metadata_file"), JSON],
       "cmd_images:create_image"),
    _c(["create-container", "createcontainer"], "[options [...]] parentImageNameOrID",
       "Create a new container from an image", 1, 1,
       [("list", ["-name", "n"], "Container name", "name"), ("bool", ["-volatile"], "Mark as volatile", "volatile"),
        ("string", ["-id", "i"], "Container ID", "id"), ("string", ["-metadata", "m"], "Metadata", "metadata"),
        ("string", ["-metadata-file", "f"], "Metadata File", "metadata_file"), JSON, *MAP_FLAGS],
       "cmd_containers:create_container"),
    # dedup.go (1.62) is not offered: it needs reflinks and Store.Dedup.
    # delete.go
    _c(["delete"], "[LayerOrImageOrContainerNameOrID [...]]",
       "Delete a layer or image or container, with no safety checks", 1, 0, [JSON], "cmd_delete:delete"),
    _c(["delete-layer", "deletelayer"], "[LayerNameOrID [...]]", "Delete a layer, with safety checks", 1, 0,
       [JSON], "cmd_delete:delete_layer"),
    _c(["delete-image", "deleteimage"], "[ImageNameOrID [...]]", "Delete an image, with safety checks", 1, 0,
       [("bool", ["-test", "t"], "Only test removal", "test"), JSON], "cmd_delete:delete_image"),
    _c(["delete-container", "deletecontainer"], "[ContainerNameOrID [...]]",
       "Delete a container, with safety checks", 1, 0, [JSON], "cmd_delete:delete_container"),
    # diff.go
    _c(["changes"], "[options [...]] layerNameOrID [referenceLayerNameOrID]", "Compare two layers", 1, 2,
       [JSON], "cmd_diff:changes"),
    _c(["diffsize", "diff-size"], "[options [...]] layerNameOrID [referenceLayerNameOrID]",
       "Compare two layers", 1, 2, [], "cmd_diff:diffsize"),
    _c(["diff"], "[options [...]] layerNameOrID [referenceLayerNameOrID]", "Compare two layers", 1, 2,
       [("string", ["-file", "f"], "Write to file instead of stdout", "file"),
        ("bool", ["-uncompressed", "u"], "Use no compression", "uncompressed"),
        ("bool", ["-gzip", "c"], "Compress using gzip", "gzip"),
        ("bool", ["-bzip2", "-bz2", "b"], "Compress using bzip2 (not currently supported)", "bzip2"),
        ("bool", ["-xz", "x"], "Compress using xz (not currently supported)", "xz")],
       "cmd_diff:diff"),
    _c(["applydiff", "apply-diff"], "[options [...]] layerNameOrID [referenceLayerNameOrID]",
       "Apply a diff to a layer", 1, 1,
       [("string", ["-file", "f"], "Read from file instead of stdin", "file")], "cmd_diff:applydiff"),
    # drivers (lamina)
    _c(["drivers"], "[options [...]]", "List installed graph drivers and whether they work here", 0, 0,
       [JSON], "cmd_misc:drivers", origin="lamina", needs_store=False, needs_defaults=False,
       help_text="Lists every installed lamina graph driver (entry point group lamina.drivers): its\n"
                 "name, the distribution that provides it, its version, and whether it can be used\n"
                 "for the graph root (-g, or storage.conf's) on this host, with the reason if not."),
    # exists.go
    _c(["exists"], "[LayerOrImageOrContainerNameOrID [...]]", "Check if a layer or image or container exists",
       1, 0,
       [("bool", ["-quiet", "q"], "Don't print names", "quiet"),
        ("bool", ["-layer", "l"], "Only succeed if the match is a layer", "layer"),
        ("bool", ["-image", "i"], "Only succeed if the match is an image", "image"),
        ("bool", ["-container", "c"], "Only succeed if the match is a container", "container"), JSON],
       "cmd_misc:exists"),
    # export (lamina)
    _c(["export"], "[options [...]] imageNameOrID oci:DIR[:TAG]|docker-archive:FILE[:NAME:TAG]",
       "Export an image to an OCI layout or a docker archive", 2, 2,
       [("string", ["-compression"], "Layer compression: none, gzip or zstd", "compression", "none")],
       "cmd_transfer:export_image", origin="lamina",
       help_text="Writes the image's manifest, config and layers; prints the digest of what it wrote\n"
                 "(the manifest for oci:, the config for docker-archive:)."),
    # gc.go (1.62)
    _c(["gc"], "[options [...]]", "Garbage collect", 0, 0, [JSON], "cmd_check:gc", origin="1.62"),
    # image.go
    _c(["image"], "[options [...]] imageNameOrID [...]", "Examine an image", 1, 0, [JSON], "cmd_images:image"),
    _c(["list-image-data", "listimagedata"], "[options [...]] imageNameOrID",
       "List data items that are attached to an image", 1, 1, [JSON], "cmd_data:list_data"),
    _c(["get-image-data", "getimagedata"], _IMG_DATA, "Get data that is attached to an image", 2, 0,
       [("string", ["-file", "f"], "Write data to file", "file")], "cmd_data:get_data"),
    _c(["get-image-data-size", "getimagedatasize"], _IMG_DATA, "Get size of data that is attached to an image",
       2, 0, [], "cmd_data:get_data_size"),
    _c(["get-image-data-digest", "getimagedatadigest"], _IMG_DATA,
       "Get digest of data that is attached to an image", 2, 0, [], "cmd_data:get_data_digest"),
    _c(["get-image-dir", "getimagedir"], "[options [...]] imageNameOrID",
       "Find the image's associated data directory", 1, 0, [], "cmd_images:get_dir", origin="1.62"),
    _c(["get-image-run-dir", "getimagerundir"], "[options [...]] imageNameOrID",
       "Find the image's associated runtime directory", 1, 0, [], "cmd_images:get_run_dir", origin="1.62"),
    _c(["set-image-data", "setimagedata"], _IMG_DATA,
       "Set data that is attached to an image (with sometimes wrong digest)", 2, 0,
       [("string", ["-file", "f"], "Read data from file", "file")], "cmd_data:set_data"),
    # images.go
    _c(["images"], "[options [...]]", "List images", 0, 0,
       [JSON, ("bool", ["-quiet", "q"], "Only print IDs", "quiet")], "cmd_images:images"),
    _c(["images-by-digest"], "[options [...]] DIGEST", "List images by digest", 1, 1,
       [JSON, ("bool", ["-quiet", "q"], "Only print IDs", "quiet")], "cmd_images:images_by_digest"),
    # import (lamina)
    _c(["import"], "[options [...]] oci:DIR[:TAG]|docker-archive:FILE[:REF] [imageName]",
       "Import an image from an OCI layout or a docker archive", 1, 2, [], "cmd_transfer:import_image",
       origin="lamina",
       help_text="Stores the image's layers, config and manifest (as big data) and prints the new\n"
                 "image's ID; imageName (or the reference in the source) becomes its name."),
    # layer.go
    _c(["layer"], "[options [...]] layerNameOrID [...]", "Examine a layer", 1, 0, [JSON], "cmd_layers:layer"),
    _c(["layer-parent-owners"], "[options [...]] layerNameOrID [...]",
       "Compute the set of unmapped parent UIDs and GIDs of the layer", 1, 0, [JSON],
       "cmd_layers:layer_parent_owners"),
    _c(["list-layer-data", "listlayerdata"], "[options [...]] layerNameOrID",
       "List data items that are attached to a layer", 1, 1, [JSON], "cmd_data:list_data"),
    _c(["get-layer-data", "getlayerdata"], _LAYER_DATA, "Get data that is attached to a layer", 2, 0,
       [("string", ["-file", "f"], "Write data to file", "file")], "cmd_data:get_data"),
    _c(["set-layer-data", "setlayerdata"], _LAYER_DATA, "Set data that is attached to a layer", 2, 0,
       [("string", ["-file", "f"], "Read data from file", "file")], "cmd_data:set_data"),
    # layers.go
    _c(["layers"], "[options [...]]", "List layers", 0, 0,
       [("bool", ["-tree", "t"], "Use a tree", "tree"), JSON], "cmd_layers:layers"),
    # metadata.go
    _c(["metadata"], "[LayerOrImageOrContainerNameOrID [...]]", "Retrieve layer, image, or container metadata",
       1, 0, [("bool", ["-quiet", "q"], "Omit names and IDs", "quiet"), JSON], "cmd_misc:metadata"),
    _c(["set-metadata", "setmetadata"], "[options [...]] layerOrImageOrContainerNameOrID",
       "Set layer, image, or container metadata", 1, 1,
       [("string", ["-metadata", "m"], "Metadata", "metadata"),
        ("string", ["-metadata-file", "f"], "Metadata File", "metadata_file")], "cmd_misc:set_metadata"),
    # mount.go (1.62 adds --read-only as another name of --ro)
    _c(["mount"], "[options [...]] LayerOrContainerNameOrID", "Mount a layer or container", 1, 0,
       [("string", ["-opt", "o"], "Mount Options", "opt"), ("string", ["-label", "l"], "Mount Label", "label"),
        ("bool", ["-ro", "r", "!-read-only"], "Mount image readonly", "ro"), JSON], "cmd_mount:mount"),
    _c(["unmount", "umount"], "LayerOrContainerNameOrID", "Unmount an image, layer or container", 1, 0,
       [JSON, ("bool", ["-force", "f"], "Force the umount", "force")], "cmd_mount:unmount"),
    _c(["mounted"], "LayerOrContainerNameOrID", "Check if a file system is mounted", 1, 0, [JSON],
       "cmd_mount:mounted"),
    # name.go (1.62 adds remove-names)
    _c(["get-names", "getnames"], "[options [...]] imageOrContainerNameOrID",
       "Get layer, image, or container name or names", 1, 0, [JSON], "cmd_misc:get_names"),
    _c(["add-names", "addnames"], "[options [...]] imageOrContainerNameOrID",
       "Add layer, image, or container name or names", 1, 0,
       [("list", ["-name", "n"], "New name", "name"), JSON], "cmd_misc:add_names"),
    _c(["remove-names", "removenames"], "[options [...]] imageOrContainerNameOrID",
       "Remove layer, image, or container name or names", 1, 0,
       [("list", ["-name", "n"], "Name to remove", "name"), JSON], "cmd_misc:remove_names", origin="1.62"),
    _c(["set-names", "setnames"], "[options [...]] imageOrContainerNameOrID",
       "Set layer, image, or container name or names", 1, 0,
       [("list", ["-name", "n"], "New name", "name"), JSON], "cmd_misc:set_names"),
    # shutdown.go, status.go, version.go, wipe.go
    _c(["shutdown"], "", "Shut down layer storage", 0, 0,
       [JSON, ("bool", ["-force", "f"], "Unmount mounted layers first", "force")], "cmd_misc:shutdown"),
    _c(["status"], "", "Check on graph driver status", 0, 0, [JSON], "cmd_misc:status"),
    _c(["version"], "", "Return {prog} version information", 0, 0, [JSON], "cmd_misc:version"),
    _c(["wipe"], "", "Wipe all layers, images, and containers", 0, 0, [JSON], "cmd_misc:wipe"),
)


def find(name: str) -> Command | None:
    """The command called *name* (any of its aliases)."""
    for command in COMMANDS:
        if name in command.names:
            return command
    return None
