"""What participants receive from us: data releases with checksums and download links."""
