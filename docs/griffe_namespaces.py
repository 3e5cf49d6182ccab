"""A griffe extension for the API reference: load ``ember``'s namespace subpackages.

``ember/backends/`` has no ``__init__.py`` (an implicit namespace package), which
griffe's static loader does not descend into, so the alias
``ember.configure_limits -> ember.backends.limits.configure_limits`` could not be
resolved. This visits such folders' modules and attaches them to the package. It
does nothing for folders that have an ``__init__.py``. (Not a docs page: excluded
in mkdocs.yml.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import griffe


class NamespaceSubpackages(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader,
                   **kwargs: Any) -> None:
        if pkg.name != "ember" or not isinstance(pkg.filepath, Path):
            return
        for folder in sorted(Path(pkg.filepath).parent.iterdir()):
            if (not folder.is_dir() or folder.name in pkg.members
                    or (folder / "__init__.py").exists() or not any(folder.glob("*.py"))):
                continue
            namespace = griffe.Module(folder.name, filepath=[folder], parent=pkg)
            pkg.set_member(folder.name, namespace)
            for path in sorted(folder.glob("*.py")):
                code = path.read_text(encoding="utf-8")
                loader.lines_collection[path] = code.splitlines()
                module = griffe.visit(path.stem, path, code, parent=namespace,
                                      extensions=loader.extensions,
                                      docstring_parser=loader.docstring_parser,
                                      docstring_options=loader.docstring_options,
                                      lines_collection=loader.lines_collection,
                                      modules_collection=loader.modules_collection)
                namespace.set_member(path.stem, module)
