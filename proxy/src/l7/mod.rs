//! L7 enforcement (in progress).
