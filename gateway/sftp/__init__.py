"""SFTP client side: pinned host keys and connections to partners' servers."""
