"""What every layer's errors share: quoting another library's error in one line."""


def one_line(error: BaseException) -> str:
    """`TypeName: first line of the message`, to quote another library's error inside ours."""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
