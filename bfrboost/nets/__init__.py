"""Networks shared by several stages: ArcFace (identity), the IDDPM face prior, RRDB and Real-ESRGAN."""
