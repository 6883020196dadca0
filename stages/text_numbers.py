"""Decimal numbers in a byte buffer, converted with numpy and no Python loop, bit for bit as `float()` does.

A token of at most 16 characters (after its sign) is read as an integer mantissa M and a count of decimal places
k, eight digits at a time in a 64-bit word (SWAR: the digits of one word combined by three multiplications). When
M <= 2**53 and the power of ten is at most 10**22, both M and 10**k are exact doubles and one IEEE division (or
multiplication, for a positive exponent) rounds once: the result is the correctly rounded double of the decimal,
which is what `float()` returns (Clinger's fast path). Every other token (more digits, a large exponent, `nan`,
`inf`, `1_000`, anything that is not a number) is converted by `float()` itself, one by one.
"""
import numpy as np

PAD = 16  # bytes that must precede the first token and follow the last one in the buffer

U64 = np.uint64
ASCII_ZERO = U64(0x3030303030303030)  # XOR makes the digits 0..9, the dot 0x1E
LOW7 = U64(0x7F7F7F7F7F7F7F7F)
HIGH = U64(0x8080808080808080)
ONES = U64(0x0101010101010101)
DOT = U64(0x1E1E1E1E1E1E1E1E)  # "." in digit space
OVER_NINE = U64(0x7676767676767676)  # a byte plus 0x76 reaches 0x80 when it is more than 9
EXPONENT = U64(0x6565656565656565)  # "e"; "E" | 0x20 is "e" too
LOWER = U64(0x2020202020202020)
BYTE_INDEX = U64(0x0706050403020100)  # byte j holds j: finds which byte is marked
FF = U64(0xFF)
# KEEP[m]: the last m bytes of a little-endian word (the last m characters of the 8 it holds)
KEEP = np.array([0] + [((1 << (8 * m)) - 1) << (64 - 8 * m) for m in range(1, 9)], dtype=np.uint64)
# with d decimal places the dot is byte 7 - d of the last word: the bytes before it and after it
BELOW = np.array([0] + [(1 << (8 * (7 - d))) - 1 for d in range(1, 8)], dtype=np.uint64)
ABOVE = np.array([0] + [((1 << 64) - 1) ^ ((1 << (8 * (8 - d))) - 1) for d in range(1, 8)], dtype=np.uint64)
POWERS = np.array([10.0 ** k for k in range(23)])  # exact doubles
MAX_EXACT = U64(2 ** 53)
MAX_POWER = 22


def words_at(buffer):
    """The little-endian 64-bit word starting at every byte of `buffer` (a view: word[i] is buffer[i:i + 8])."""
    return np.ndarray((len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))


def marked_bytes(word):
    """0x80 in every byte of `word` that is zero, 0 elsewhere (exact: no borrow between bytes)."""
    return ~(((word & LOW7) + LOW7) | word | LOW7)


def eight_digits(word):
    """The number written by the 8 digit values (0..9) of `word`, its first byte the most significant."""
    word = word * U64(10) + (word >> U64(8))
    return (((word & U64(0x000000FF000000FF)) * U64(0x000F424000000064))
            + (((word >> U64(16)) & U64(0x000000FF000000FF)) * U64(0x0000271000000001))) >> U64(32)


def decimal_parts(buffer, words, starts, ends):
    """For each token buffer[start:end] of the form [sign] digits [. digits] (16 characters at most after the
    sign): (mantissa, decimal places, negative, ok). Where `ok` is False the other values mean nothing."""
    first = buffer[starts]
    negative = first == 45  # "-"
    starts = starts + (negative | (first == 43))  # "+"
    length = ends - starts
    low = words[ends - 8] ^ ASCII_ZERO  # the last 8 characters; the 8 before them
    high = words[ends - 16] ^ ASCII_ZERO
    low &= KEEP[np.clip(length, 0, 8)]  # what comes before the token (or its sign) becomes 0
    high &= KEEP[np.clip(length - 8, 0, 8)]
    dot_low = marked_bytes(low ^ DOT) >> U64(7)  # 1 in the byte of a dot
    dot_high = marked_bytes(high ^ DOT) >> U64(7)
    dots = ((dot_low + dot_high) * ONES) >> U64(56)
    places = ((dot_low * BYTE_INDEX) >> U64(56)) + ((dot_high * BYTE_INDEX) >> U64(56)) + (dot_high != 0) * U64(8)
    # take the dot out: the digits before it move one byte towards the end
    in_low = U64(0) - (dot_low != 0).astype(np.uint64)  # all ones where the dot is in the low word
    below = (dot_low - U64(1)) & in_low
    low = (low & ~(below | dot_low * FF)) | ((low & below) << U64(8)) | ((high >> U64(56)) & in_low)
    below = (dot_high - U64(1)) & ~in_low & (U64(0) - (dot_high != 0).astype(np.uint64))
    high = np.where(in_low != 0, high << U64(8), (high & ~(below | dot_high * FF)) | ((high & below) << U64(8)))
    digits_only = (((low + OVER_NINE) | (high + OVER_NINE)) & HIGH) == 0
    mantissa = eight_digits(high) * U64(100_000_000) + eight_digits(low)
    ok = digits_only & (dots <= 1) & (length >= 1) & (length <= 16) & (length > dots.astype(length.dtype))
    ok &= mantissa <= MAX_EXACT
    return mantissa, places.astype(np.intp), negative, ok


def exponent_marks(words, starts, ends):
    """Where the last 8 characters of a token hold one `e` or `E`: its position (else -1)."""
    last = words[ends - 8] & KEEP[np.clip(ends - starts, 0, 8)]
    marks = marked_bytes((last | LOWER) ^ EXPONENT) >> U64(7)
    count = (marks * ONES) >> U64(56)
    offset = ((marks * BYTE_INDEX) >> U64(56)).astype(np.intp)  # 7 - byte index: characters after the mark
    return np.where(count == 1, ends - 1 - offset, -1)


def scaled(mantissa, power):
    """mantissa * 10**power, one rounding, where |power| <= MAX_POWER."""
    values = mantissa.astype(np.float64)
    scale = POWERS[np.abs(power)]
    return np.where(power >= 0, values * scale, values / scale)


def decimal_values(buffer, starts, ends):
    """The numbers written in buffer[starts[i]:ends[i]], each bit for bit `float(token)`, and whether it is one.

    `buffer` is a uint8 array with PAD bytes before the first token and after the last; tokens hold no
    whitespace and no byte above 127.

    >>> text = np.frombuffer(b" " * PAD + b"-1.5 2e3 .25 x 1_0 nan" + b" " * PAD, dtype=np.uint8)
    >>> values, ok = decimal_values(text, np.array([16, 21, 25, 29, 31, 35]), np.array([20, 24, 28, 30, 34, 38]))
    >>> values.tolist()[:5], ok.tolist()
    ([-1.5, 2000.0, 0.25, 0.0, 10.0], [True, True, True, False, True, True])
    """
    starts = np.asarray(starts, dtype=np.intp)
    ends = np.asarray(ends, dtype=np.intp)
    words = words_at(buffer)
    mantissa, places, negative, ok = decimal_parts(buffer, words, starts, ends)
    values = mantissa.astype(np.float64) / POWERS[np.minimum(places, MAX_POWER)]
    finish(buffer, words, starts, ends, values, ok, negative)
    return values, ok


def column_values(buffer, starts, ends):
    """`decimal_values` for the tokens of one column, faster when they have the same number of decimal places
    (as `%.3f` writes them, or integers): the dot is then at the same place in every token, taken out with
    the same masks, and the mantissa divided by one power of ten. Tokens written otherwise take the general way.
    """
    starts = np.ascontiguousarray(starts, dtype=np.intp)  # gathers by a strided index are slower
    ends = np.ascontiguousarray(ends, dtype=np.intp)
    if len(starts) == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    first = buffer[starts[0]:ends[0]].tobytes()
    places = len(first) - 1 - first.rfind(b".") if b"." in first else 0
    longest = int((ends - starts).max())
    if places > 7 or longest > 17:
        return decimal_values(buffer, starts, ends)
    words = words_at(buffer)
    lead = buffer[starts]
    negative = lead == 45  # "-"
    length = ends - starts - (negative | (lead == 43))  # characters after the sign
    low = words[ends - 8] ^ ASCII_ZERO
    if longest <= 8:
        low &= KEEP[length]
        if places:
            low = (low & ABOVE[places]) | ((low & BELOW[places]) << U64(8))
        digits_only = ((low + OVER_NINE) & HIGH) == 0
        mantissa = eight_digits(low)
    else:
        high = (words[ends - 16] ^ ASCII_ZERO) & KEEP[np.clip(length - 8, 0, 8)]
        low &= KEEP[np.minimum(length, 8)]
        if places:
            low = (low & ABOVE[places]) | ((low & BELOW[places]) << U64(8)) | (high >> U64(56))
            high <<= U64(8)
        digits_only = (((low + OVER_NINE) | (high + OVER_NINE)) & HIGH) == 0
        mantissa = eight_digits(high) * U64(100_000_000) + eight_digits(low)
    ok = digits_only & (length > places) & (length <= 16)
    if places:  # the dot is inside the token (length > places), where the masks expect it
        ok &= buffer[ends - places - 1] == 46  # "."
    if longest > 15:
        ok &= mantissa <= MAX_EXACT
    values = mantissa.astype(np.float64)
    if places:
        values /= POWERS[places]
    rest = np.flatnonzero(~ok)
    if len(rest):  # written otherwise: the general way
        values[rest], ok[rest] = decimal_values(buffer, starts[rest], ends[rest])
        negative[rest] = False  # decimal_values has given them their sign
    np.negative(values, out=values, where=negative)
    return values, ok


def finish(buffer, words, starts, ends, values, ok, negative):
    """Converts the tokens that are not plain decimals and gives every value its sign."""
    rest = np.flatnonzero(~ok)
    if len(rest):
        values[rest], ok[rest] = with_exponents(buffer, words, starts[rest], ends[rest])
    np.negative(values, out=values, where=negative)  # -0 stays -0.0, as float("-0")


def with_exponents(buffer, words, starts, ends):
    """Tokens that are not plain decimals: `1.5e-3` in numpy too, anything else by float()."""
    values = np.zeros(len(starts))
    ok = np.zeros(len(starts), dtype=bool)
    marks = exponent_marks(words, starts, ends)
    found = np.flatnonzero(marks >= 0)
    if len(found):
        mantissa, places, _, good = decimal_parts(buffer, words, starts[found], marks[found])
        exponent, exponent_places, exponent_negative, exponent_good = decimal_parts(
            buffer, words, marks[found] + 1, ends[found])
        power = np.where(exponent_negative, -1, 1) * np.minimum(exponent, U64(1000)).astype(np.intp) - places
        good &= exponent_good & (exponent_places == 0) & (np.abs(power) <= MAX_POWER)
        values[found] = scaled(mantissa, np.clip(power, -MAX_POWER, MAX_POWER))
        ok[found] = good
    left = np.flatnonzero(~ok).tolist()
    text = buffer.tobytes() if left else b""
    for index in left:
        word = text[starts[index]:ends[index]].decode("ascii")
        try:
            number = float(word)
        except ValueError:
            continue
        # float() has the sign; the caller negates tokens that start with "-"
        values[index], ok[index] = (-number if word.startswith("-") else number), True
    return values, ok
