"""The demo model: a tiny SD3 trained by this project on captioned pictures of shapes."""
