"""The Hydra config tree (shipped inside the package so installed entry points find it)."""
