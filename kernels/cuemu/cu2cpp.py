#!/usr/bin/env python3
"""kernels/cuemu/cu2cpp.py IN.cu OUT.cpp: the two CUDA syntaxes C++ lacks, rewritten for cuemu.

  K<T>(...)<<<grid, block[, smem[, stream]]>>>(args);  ->  cuemu_launch(grid, block, smem, stream, "K<T>", K<T>, args);
  extern __shared__ T name[];                         ->  T *name = (T *)cuemu_dynamic_smem();

Everything else (__global__, __shared__, intrinsics, the runtime) is cuemu.h's. A #line keeps compiler
messages pointing at the .cu file."""
import re
import sys


def split_top(s):
    """Split on commas outside (), [], {}."""
    out, depth, cur = [], 0, ''
    for ch in s:
        if ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        if ch == ',' and depth == 0:
            out.append(cur.strip())
            cur = ''
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def kernel_start(src, i):
    """Start of the kernel name (identifier with optional <template args>) that ends at i."""
    j = i
    if src[j - 1] == '>':
        depth = 0
        while True:
            j -= 1
            if src[j] == '>':
                depth += 1
            elif src[j] == '<':
                depth -= 1
                if depth == 0:
                    break
    while j > 0 and (src[j - 1].isalnum() or src[j - 1] in '_:'):
        j -= 1
    return j


def matching(src, i, open_ch, close_ch):
    depth = 0
    for j in range(i, len(src)):
        if src[j] == open_ch:
            depth += 1
        elif src[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j
    raise SystemExit('cu2cpp: unbalanced %s at offset %d' % (open_ch, i))


def rewrite(src):
    src = re.sub(r'extern\s+__shared__\s+([\w:]+(?:\s+[\w:]+)*)\s+(\w+)\s*\[\s*\]\s*;',
                 r'\1 *\2 = (\1 *)cuemu_dynamic_smem();', src)
    out, pos = [], 0
    while True:
        i = src.find('<<<', pos)
        if i < 0:
            out.append(src[pos:])
            return ''.join(out)
        k0 = kernel_start(src, i)
        kernel = src[k0:i].strip()
        e = src.find('>>>', i)
        cfg = split_top(src[i + 3:e])
        while len(cfg) < 4:
            cfg.append('0')
        p0 = src.index('(', e)
        p1 = matching(src, p0, '(', ')')
        args = split_top(src[p0 + 1:p1])
        out.append(src[pos:k0])
        out.append('cuemu_launch(%s, "%s", %s%s)' % (', '.join(cfg), kernel.replace('"', ''), kernel,
                                                      ''.join(', ' + a for a in args)))
        pos = p1 + 1


def main():
    if len(sys.argv) != 3:
        raise SystemExit('usage: cu2cpp.py IN.cu OUT.cpp')
    src = open(sys.argv[1]).read()
    with open(sys.argv[2], 'w') as f:
        f.write('#line 1 "%s"\n' % sys.argv[1])
        f.write(rewrite(src))


if __name__ == '__main__':
    main()
