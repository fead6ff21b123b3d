"""chunkcache: reuse every retrieved chunk's KV cache at any position, repaired by selective recompute."""

__version__ = "0.1.0"

__all__ = ["Engine", "__version__"]


def __getattr__(name: str):
    # Importing the engine pulls torch and transformers; keep `import chunkcache` cheap for the CLI's --help.
    if name == "Engine":
        from chunkcache.api import Engine

        return Engine
    raise AttributeError(name)
