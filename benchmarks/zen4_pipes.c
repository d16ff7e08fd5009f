// Which AVX-512 instructions compete with vpdpbusd zmm for its pipe? (issue 20, session 14, docs/peers.md)
//
//   gcc -O2 -march=znver3 -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx512ifma -mavx512dq \
//       -o /tmp/zen4_pipes benchmarks/zen4_pipes.c && nice -n 10 /tmp/zen4_pipes
//
// Each loop iteration runs 8 independent vpdpbusd zmm (1 per cycle on Zen 4: 8 cycles) plus 4 instructions of one
// kind on independent registers; the extra cycles per iteration (minima over 9 rounds that interleave the rows, at
// the clock that makes the vpdpbusd-only loop 8 cycles) are what those 4 take from the vpdpbusd pipe. Registers only.
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define ITERS 5000000L
#define DP(c) c=_mm512_dpbusd_epi32(c,a,b)
#define BAR __asm__ volatile("" : "+v"(a),"+v"(c0),"+v"(c1),"+v"(c2),"+v"(c3),"+v"(c4),"+v"(c5),"+v"(c6),"+v"(c7)); \
            __asm__ volatile("" : "+v"(e0),"+v"(e1),"+v"(e2),"+v"(e3),"+v"(e4),"+v"(e5),"+v"(e6),"+v"(e7))
#define X4(OP) e0=OP(e0,e4);e1=OP(e1,e5);e2=OP(e2,e6);e3=OP(e3,e7)
#define RUN(name, EXTRA) do { double best=1e9; for(int rep=0;rep<1;rep++){ \
  __m512i a=_mm512_set1_epi32(0x01010101), b=_mm512_set1_epi32(0x02020202); \
  __m512i c0=a,c1=a,c2=a,c3=a,c4=a,c5=a,c6=a,c7=a,e0=b,e1=b,e2=b,e3=b,e4=m,e5=m,e6=m,e7=m; \
  BAR; double t0=now(); \
  for(long i=0;i<ITERS;i++){ DP(c0);DP(c1);DP(c2);DP(c3);DP(c4);DP(c5);DP(c6);DP(c7); EXTRA; BAR; } \
  double t=(now()-t0)/ITERS*1e9; if(t<best) best=t; \
  sink=_mm512_add_epi32(sink,_mm512_add_epi32(_mm512_add_epi32(c0,c7),_mm512_add_epi32(e0,e3))); } \
  names[row]=name; if(best<mins[row]) mins[row]=best; row++; } while(0)
static __m512i sink;
static const char* names[32];
static double mins[32];
#define MULDQ(x,y) _mm512_mul_epi32(x,y)
#define MULLD(x,y) _mm512_mullo_epi32(x,y)
#define PERMT2D(x,y) _mm512_permutex2var_epi32(x,ix,y)
#define PERMD(x,y) _mm512_permutexvar_epi32(ix,x)
#define SRLQI(x,y) _mm512_srli_epi64(x,32)
#define SRAQX(x,y) _mm512_sra_epi64(x,cnt)
#define SRADX(x,y) _mm512_sra_epi32(x,cnt)
#define SRAVD(x,y) _mm512_srav_epi32(x,y)
#define SRAVQ(x,y) _mm512_srav_epi64(x,y)
#define ADDQ(x,y) _mm512_add_epi64(x,y)
#define BLEND(x,y) _mm512_mask_blend_epi32(0xAAAA,x,y)
#define SHUFD(x,y) _mm512_shuffle_epi32(x,0xF5)
#define PACKSSDW(x,y) _mm512_packs_epi32(x,y)
#define PACKUSWB(x,y) _mm512_packus_epi16(x,y)
#define IFMA(x,y) _mm512_madd52lo_epu64(x,y,y)
int main(void){
  double base=0;
  __m512i m=_mm512_set1_epi32(3), ix=_mm512_set_epi32(31,29,27,25,23,21,19,17,15,13,11,9,7,5,3,1);
  __m128i cnt=_mm_cvtsi32_si128(3);
  __asm__ volatile("" : "+v"(m), "+v"(ix), "+x"(cnt));
  for(int i=0;i<32;i++) mins[i]=1e9;
  int rows=0;
  for(int round=0; round<9; round++){ int row=0;  // rows interleaved in rounds, minima over the rounds
  RUN("nothing", );
  RUN("vpmuldq", X4(MULDQ));
  RUN("vpmulld", X4(MULLD));
  RUN("vpmadd52luq", X4(IFMA));
  RUN("vpermt2d", X4(PERMT2D));
  RUN("vpermd", X4(PERMD));
  RUN("vpsrad zmm, xmm count", X4(SRADX));
  RUN("vpsraq zmm, xmm count", X4(SRAQX));
  RUN("vpsravd (per-lane count)", X4(SRAVD));
  RUN("vpsravq (per-lane count)", X4(SRAVQ));
  RUN("vpsrlq zmm, imm", X4(SRLQI));
  RUN("vpaddq", X4(ADDQ));
  RUN("vpblendmd", X4(BLEND));
  RUN("vpshufd", X4(SHUFD));
  RUN("vpackssdw", X4(PACKSSDW));
  RUN("vpackuswb", X4(PACKUSWB));
  rows=row; }
  puts("| 8 vpdpbusd zmm + 4 of | ns / iteration | cycles taken from vpdpbusd |\n|---|---:|---:|");
  for(int i=0;i<rows;i++) printf("| %-26s | %5.2f | %4.1f |\n", names[i], mins[i], (mins[i]-mins[0])/mins[0]*8);
  int v[16]; memcpy(v,&sink,64); return v[0]==42;
}
