krouter policy signature v1
key-id: 0123456789abcdef
