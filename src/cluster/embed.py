#!/usr/bin/env python3
"""Turn cluster.lua into a C header (ob_cluster_lua, ob_cluster_lua_len), so
the binary carries the script it loads into Redis."""
import sys

src, out = sys.argv[1], sys.argv[2]
data = open(src, 'rb').read()
with open(out, 'w') as f:
    f.write('/* generated from cluster.lua by embed.py; do not edit */\n')
    f.write('static const char ob_cluster_lua[] = {\n')
    for i in range(0, len(data), 16):
        f.write('  ' + ', '.join(str(b) for b in data[i:i + 16]) + ',\n')
    f.write('  0};\n')
    f.write('static const size_t ob_cluster_lua_len = %d;\n' % len(data))
