// Kernel parameters of every size and signedness, and a struct passed by value: the kernel
// writes back what it received.
struct Mixed {
  char c;
  int i;
  double d;
  short s;
};

extern "C" __global__ void echo_params(int a, unsigned b, long long c, float d, double e, Mixed m, signed char f,
                                       unsigned short g, long long *out) {
  out[0] = a;
  out[1] = b;
  out[2] = c;
  out[3] = __float_as_uint(d);
  out[4] = __double_as_longlong(e);
  out[5] = m.c;
  out[6] = m.i;
  out[7] = __double_as_longlong(m.d);
  out[8] = m.s;
  out[9] = f;
  out[10] = g;
}
